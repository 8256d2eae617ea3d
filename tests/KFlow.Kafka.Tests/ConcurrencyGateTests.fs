// Tests for src/KFlow.Kafka/ConcurrencyGate.fs: the gate alone (slots taken and given back however
// a function ends), then the workflow-wide caps MaxConcurrentCalls and MaxConcurrentWrites on the
// embedded cluster. The cluster tests are sequenced: they share the machine's cores.
module KFlow.Kafka.Tests.ConcurrencyGateTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka

/// Counts functions running at once and the most seen.
[<Sealed>]
type private Running() =
    let mutable now = 0
    let mutable peak = 0

    /// One more running; raises the peak if needed.
    member _.Enter() =
        let n = Interlocked.Increment &now
        let mutable seen = Volatile.Read &peak

        while n > seen && Interlocked.CompareExchange(&peak, n, seen) <> seen do
            seen <- Volatile.Read &peak

    /// One fewer running.
    member _.Leave() = Interlocked.Decrement &now |> ignore

    /// The most running at once so far.
    member _.Peak = Volatile.Read &peak

let private keyOf (value: string) = value.Substring(0, value.IndexOf ':')

let private unitTests =
    testList "alone" [
        test "a call beyond the limit waits until a running one ends, then runs" {
            let gate = ConcurrencyGate 2
            let first = TaskCompletionSource<int>()
            let second = TaskCompletionSource<int>()
            let mutable thirdStarted = false
            let a = gate.Run(CancellationToken.None, (fun () -> first.Task))
            let b = gate.Run(CancellationToken.None, (fun () -> second.Task))

            let c =
                gate.Run(
                    CancellationToken.None,
                    fun () ->
                        thirdStarted <- true
                        Task.FromResult 3
                )

            Expect.isFalse thirdStarted "the third waits while two run"
            Expect.equal gate.Free 0 "no slot free"
            first.SetResult 1
            Expect.isTrue (c.Wait(TimeSpan.FromSeconds 10.)) "the third ran once the first ended"
            Expect.isTrue thirdStarted "the third started"
            Expect.equal c.Result 3 "with its own result"
            Expect.equal a.Result 1 "the first's task is its own"
            second.SetResult 2
            Expect.equal b.Result 2 "the second's too"
            Expect.equal gate.Free 2 "every slot is back"
        }

        test "a function that throws, faults or returns null gives its slot back" {
            let gate = ConcurrencyGate 1
            let thrown = gate.Run(CancellationToken.None, (fun () -> failwith "thrown"))
            Expect.isTrue thrown.IsFaulted "a throw faults the task"
            Expect.equal gate.Free 1 "the slot is back after a throw"

            let faulted =
                gate.Run(CancellationToken.None, (fun () -> Task.FromException<int>(exn "faulted")))

            Expect.isTrue faulted.IsFaulted "a faulted task stays faulted"
            Expect.equal gate.Free 1 "the slot is back after a fault"

            let failing = TaskCompletionSource<int>()
            let later = gate.Run(CancellationToken.None, (fun () -> failing.Task))
            Expect.equal gate.Free 0 "held while the task runs"
            failing.SetException(exn "later")
            Expect.isTrue later.IsFaulted "the task faults"
            Expect.equal gate.Free 1 "the slot is back after an asynchronous fault"

            let nothing =
                gate.Run(CancellationToken.None, (fun () -> Unchecked.defaultof<Task<int>>))

            Expect.isTrue nothing.IsFaulted "a null task faults"
            Expect.equal gate.Free 1 "the slot is back after a null task"

            let write =
                gate.RunWrite(CancellationToken.None, (fun () -> Unchecked.defaultof<Task>))

            Expect.isTrue write.IsCompletedSuccessfully "a write returning null is done"
            Expect.equal gate.Free 1 "the slot is back after a null write"
        }

        test "a cancelled wait ends the task as cancelled without calling the function" {
            let gate = ConcurrencyGate 1
            let holder = TaskCompletionSource<int>()
            gate.Run(CancellationToken.None, (fun () -> holder.Task)) |> ignore
            use cancel = new CancellationTokenSource()
            let mutable called = false

            let waiting =
                gate.Run(
                    cancel.Token,
                    fun () ->
                        called <- true
                        Task.FromResult 0
                )

            cancel.Cancel()

            Expect.throwsC (fun () -> waiting.Wait(TimeSpan.FromSeconds 10.) |> ignore) (fun e ->
                Expect.isTrue (waiting.IsCanceled) $"cancelled, got {e}")

            let refused =
                gate.Run(
                    cancel.Token,
                    fun () ->
                        called <- true
                        Task.FromResult 0
                )

            Expect.isTrue refused.IsCanceled "a cancelled token refuses at once"
            holder.SetResult 0
            Expect.isFalse called "the function was never called"
            Expect.equal gate.Free 1 "the slot is back"
        }

        test "without a cap nothing is counted" {
            let gate = ConcurrencyGate Int32.MaxValue
            let pending = TaskCompletionSource<int>()
            let t = gate.Run(CancellationToken.None, (fun () -> pending.Task))
            Expect.isTrue (obj.ReferenceEquals(t, pending.Task)) "the function's own task"
            Expect.equal gate.Free Int32.MaxValue "no cap"
        }
    ]

/// Runs `pipeOf running sunk` over 2,000 messages of 200 keys on 4 partitions with `capped` applied
/// to the options; every message must reach `sunk` once, and `running` must peak at exactly `cap`.
let private expectCapped
    (name: string)
    (what: string)
    (cap: int)
    (capped: WorkflowOptions -> WorkflowOptions)
    (pipeOf: Running -> ConcurrentQueue<string> -> Pipe<byte[], Sunk>)
    =
    let n = 2000
    use cluster = clusterWith name 4 200 n
    let sunk = ConcurrentQueue<string>()
    let running = Running()
    let log = Log()
    let options = capped (options cluster log name [ name ])

    runUntilSunk cluster log (seconds 60.) sunk n options (pipeOf running sunk)
    |> ignore

    Expect.equal (sunk |> Seq.distinct |> Seq.length) n "every message processed once"
    Expect.isLessThanOrEqual running.Peak cap $"never more than {cap} {what} at once"
    Expect.equal running.Peak cap "the cap is reached"

let private callCap =
    testCase
        "with MaxConcurrentCalls 4, 200 substreams over 4 partitions run at most 4 async calls at once, and do reach 4"
    <| fun () ->
        expectCapped "capped-calls" "calls" 4 (fun o -> { o with MaxConcurrentCalls = 4 })
        <| fun running sunk ->
            let step (v: string) = task {
                running.Enter()
                do! Task.Delay 2
                running.Leave()
                return v
            }

            decoded ()
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.mapAsync 1 step)
            |> Pipe.sink "record" (fun v -> Task.Run(fun () -> sunk.Enqueue v))

let private writeCap =
    testCase
        "with MaxConcurrentWrites 3, sink writes of 200 substreams over 4 partitions run at most 3 at once, and do reach 3"
    <| fun () ->
        expectCapped "capped-writes" "writes" 3 (fun o -> { o with MaxConcurrentWrites = 3 })
        <| fun running sunk ->
            let write (v: string) : Task = task {
                running.Enter()
                do! Task.Delay 2
                sunk.Enqueue v
                running.Leave()
            }

            decoded () |> Pipe.demux keyOf (fun sub -> sub |> Pipe.sink "record" write)

let private restartKeepsNoSlot =
    testCase
        "with MaxConcurrentCalls 1, calls that throw, fault and cause restarts give their slot back: every message is processed"
    <| fun () ->
        let n = 400
        use cluster = clusterWith "capped-restart" 2 20 n
        let sunk = ConcurrentQueue<string>()
        let mutable failures = 0
        let log = Log()

        // The first call of value 'k3:5' throws at once, the first of 'k7:9' faults later: two
        // failures, two restarts (RestartAndReplay). With one slot, a slot kept by either would
        // stop every later call.
        let step (v: string) =
            if v = "k3:5" && Interlocked.CompareExchange(&failures, 1, 0) = 0 then
                failwith "thrown at once"

            task {
                do! Task.Delay 1

                if v = "k7:9" && Interlocked.CompareExchange(&failures, 2, 1) = 1 then
                    failwith "faulted later"

                return v
            }

        let pipe =
            decoded ()
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.mapAsync 1 step)
            |> Pipe.sink "record" (fun v -> Task.Run(fun () -> sunk.Enqueue v))

        let options = {
            options cluster log "capped-restart" [ "capped-restart" ] with
                MaxConcurrentCalls = 1
        }

        let handle = Workflow.run options pipe

        waitUntil log (seconds 60.) "every message is processed after the restarts" (fun () ->
            (sunk |> Seq.distinct |> Seq.length) >= n)

        stopped log handle
        Expect.equal failures 2 "both failures happened"
        Expect.isGreaterThanOrEqual handle.Stats.Restarts 2L "each caused a restart"

let private refusedAtStart =
    testCase "a cap below 1 is refused by Workflow.run with an ArgumentException naming the setting"
    <| fun () ->
        for setting, options in
            [
                "MaxConcurrentCalls",
                {
                    WorkflowOptions.create "bad" "127.0.0.1:1" "bad" [ "t" ] with
                        MaxConcurrentCalls = 0
                }
                "MaxConcurrentWrites",
                {
                    WorkflowOptions.create "bad" "127.0.0.1:1" "bad" [ "t" ] with
                        MaxConcurrentWrites = -1
                }
            ] do
            Expect.throwsC (fun () -> Workflow.run options Pipe.source<byte[]> |> ignore) (fun e ->
                Expect.isTrue (e :? ArgumentException) $"an ArgumentException, got {e}"
                Expect.stringContains e.Message setting "names the setting")

let tests =
    testList "ConcurrencyGate" [
        unitTests
        refusedAtStart
        testSequenced
        <| testList "on the cluster" [ callCap; writeCap; restartKeepsNoSlot ]
    ]
