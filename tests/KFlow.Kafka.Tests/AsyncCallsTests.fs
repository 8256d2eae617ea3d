// Tests for src/KFlow.Kafka/AsyncCalls.fs: a call's gate slot is held from its start to the end of
// its task however it ends, a call that runs on comes back once (with its assignment), and retries.
module KFlow.Kafka.Tests.AsyncCallsTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

let private handlingWith (policies: Map<string, ErrorPolicy>) =
    let options = {
        WorkflowOptions.create "calls" "localhost:9" "g" [ "t" ] with
            OnStageFailure = policies
    }

    FailureHandling.create (Counters "calls") options

/// A request of the async node "lookup" numbered `id`, running `run`.
let private request (id: int) (run: obj -> Task<obj>) : AsyncRequest = {
    Id = id
    Stage = "lookup"
    Envelope = {
        Value = (id :> obj)
        Tokens = []
        Key = ""
        Position = {
            TopicPartition = tp
            Offset = int64 id
        }
        Timestamp = DateTimeOffset.UnixEpoch
    }
    Run = run
}

/// Calls of assignment 7 under `gate`; the calls that ran on, as they ended.
let private callsWith (handling: FailureHandling) (gate: ConcurrencyGate) =
    let ended = ConcurrentQueue<RunningCall>()

    let calls =
        AsyncCalls(tp, handling, gate, (fun () -> CancellationToken.None), (fun () -> 7), ended.Enqueue)

    calls, ended

let private okValue (result: Result<obj, exn>) =
    match result with
    | Ok v -> v
    | Error e -> failwithf "expected a value, got %O" e

let tests =
    testList "AsyncCalls" [
        test
            "a call that runs on holds its slot until its task ends, then comes back once with its assignment" {
            let gate = ConcurrencyGate 1
            let calls, ended = callsWith (handlingWith Map.empty) gate
            let result = TaskCompletionSource<obj>()
            calls.Start(request 1 (fun _ -> result.Task))
            Expect.equal gate.Free 0 "the running call holds the slot"
            Expect.equal calls.InFlight 1 "in flight"
            Expect.isFalse calls.HasReady "no result yet"
            result.SetResult((42 :> obj))
            Expect.equal gate.Free 1 "the slot is back once the task ended"
            Expect.equal ended.Count 1 "the call came back once"
            let call = ended.ToArray()[0]
            Expect.equal call.Generation 7 "with the assignment it started in"
            Expect.equal call.Id 1 "and its number"
            Expect.equal (okValue call.Result) ((42 :> obj)) "and its value"
        }

        test "a call that completes at once is queued at once and gives its slot back" {
            let gate = ConcurrencyGate 1
            let calls, ended = callsWith (handlingWith Map.empty) gate
            calls.Start(request 3 (fun v -> Task.FromResult v))
            Expect.equal gate.Free 1 "the slot is back"
            Expect.isTrue calls.HasReady "its result is ready"
            Expect.isTrue ended.IsEmpty "nothing comes back later"
            let struct (id, result) = calls.Take()
            Expect.equal id 3 "its number"
            Expect.equal (okValue result) ((3 :> obj)) "its value"
            Expect.equal calls.InFlight 0 "no longer in flight"
        }

        test "a function that throws, faults later or gives no task ends as an error and gives its slot back" {
            let gate = ConcurrencyGate 1
            let calls, ended = callsWith (handlingWith Map.empty) gate
            calls.Start(request 1 (fun _ -> raise (InvalidOperationException "thrown")))
            Expect.equal gate.Free 1 "the slot is back after a throw"
            let struct (_, thrown) = calls.Take()
            Expect.isError thrown "a throw is an error"
            calls.Start(request 2 (fun _ -> Unchecked.defaultof<Task<obj>>))
            let struct (_, none) = calls.Take()
            Expect.isError none "no task is an error"
            Expect.equal gate.Free 1 "the slot is back after no task"
            let later = TaskCompletionSource<obj>()
            calls.Start(request 3 (fun _ -> later.Task))
            later.SetException(TimeoutException "late")
            Expect.equal gate.Free 1 "the slot is back after a fault"

            match ended.ToArray() with
            | [| call |] ->
                match call.Result with
                | Error e -> Expect.isTrue (e :? TimeoutException) "the fault's exception"
                | Ok _ -> failtest "a fault is an error"
            | other -> failtestf "one call came back, not %d" other.Length
        }

        test "a call beyond the limit starts once a running one ends" {
            let gate = ConcurrencyGate 1
            let calls, ended = callsWith (handlingWith Map.empty) gate
            let first = TaskCompletionSource<obj>()
            let second = TaskCompletionSource<obj>()
            let mutable secondStarted = false
            calls.Start(request 1 (fun _ -> first.Task))

            calls.Start(
                request 2 (fun _ ->
                    secondStarted <- true
                    second.Task)
            )

            Expect.isFalse secondStarted "the second waits for the slot"
            first.SetResult((1 :> obj))

            Expect.isTrue
                (SpinWait.SpinUntil((fun () -> Volatile.Read &secondStarted), TimeSpan.FromSeconds 10.))
                "the second started once the first ended"

            second.SetResult((2 :> obj))

            Expect.isTrue
                (SpinWait.SpinUntil((fun () -> ended.Count = 2), TimeSpan.FromSeconds 10.))
                "both came back"

            Expect.isTrue
                (SpinWait.SpinUntil((fun () -> gate.Free = 1), TimeSpan.FromSeconds 10.))
                "the slot is free"

            Expect.equal calls.InFlight 2 "both in flight until taken"
        }

        test "a call with retries in place is tried again and comes back with the value of its last try" {
            let quick = {
                First = TimeSpan.FromMilliseconds 1.
                Max = TimeSpan.FromMilliseconds 1.
                Jitter = 0.0
            }

            let gate = ConcurrencyGate 1

            let calls, ended =
                callsWith (handlingWith (Map [ "lookup", RetryInPlace(2, quick, Halt) ])) gate

            let mutable tries = 0

            calls.Start(
                request 1 (fun _ ->
                    tries <- tries + 1

                    if tries < 3 then
                        Task.FromException<obj>(TimeoutException "try again")
                    else
                        Task.FromResult(("third" :> obj)))
            )

            Expect.isTrue
                (SpinWait.SpinUntil((fun () -> ended.Count = 1), TimeSpan.FromSeconds 10.))
                "it came back"

            Expect.equal tries 3 "tried three times"
            Expect.equal (okValue (ended.ToArray()[0]).Result) (("third" :> obj)) "with the last try's value"
            Expect.equal gate.Free 1 "the slot is back"
        }
    ]
