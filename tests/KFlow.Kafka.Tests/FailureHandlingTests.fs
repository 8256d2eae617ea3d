// Tests for src/KFlow.Kafka/FailureHandling.fs: how a partition loop guards and starts a sink's
// writes (sinkStarter): a write that succeeds at once is the sink's own task, a failed one is retried.
module KFlow.Kafka.Tests.FailureHandlingTests

open System
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

let private handlingWith (sinkRetries: int) =
    let options = {
        WorkflowOptions.create "sinks" "localhost:9" "g" [ "t" ] with
            SinkRetries = sinkRetries
            SinkRetryBackoff = {
                First = TimeSpan.FromMilliseconds 1.
                Max = TimeSpan.FromMilliseconds 1.
                Jitter = 0.0
            }
    }

    FailureHandling.create (Counters "sinks") options

let private request (write: obj -> Task) : SinkRequest = {
    Sink = "db"
    Envelope = {
        Value = (1 :> obj)
        Tokens = []
        Key = ""
        Position = { TopicPartition = tp; Offset = 0L }
        Timestamp = DateTimeOffset.UnixEpoch
    }
    Write = write
    Substream = ""
    Pipelining = SinkPipelining.sequential
}

let private starter (handling: FailureHandling) =
    FailureHandling.sinkStarter handling (fun () -> "sink 'db'") (fun _ -> ValueNone) "db"

let tests =
    testList "FailureHandling" [
        test
            "with retries in place a request is not wrapped and a write that succeeds at once is the sink's own task" {
            let struct (guard, start) = starter (handlingWith 3)
            let done' = Task.FromResult 1 :> Task
            let r = request (fun _ -> done')
            Expect.isTrue (obj.ReferenceEquals(guard r, r)) "the guard returns the request itself"
            Expect.isTrue (obj.ReferenceEquals(start r, done')) "the start gives the sink's task"
        }

        test "with retries in place a failed write is tried again until it succeeds" {
            let struct (guard, start) = starter (handlingWith 3)
            let mutable tries = 0

            let r =
                request (fun _ ->
                    tries <- tries + 1

                    if tries < 3 then
                        Task.FromException(TimeoutException "down")
                    else
                        Task.CompletedTask)

            let t = start (guard r)
            Expect.isTrue (t.Wait(TimeSpan.FromSeconds 10.)) "the write succeeds"
            Expect.equal tries 3 "after three tries"
        }

        test "with retries in place a write that keeps failing fails once they are spent" {
            let struct (guard, start) = starter (handlingWith 2)
            let mutable tries = 0

            let r =
                request (fun _ ->
                    tries <- tries + 1
                    raise (TimeoutException "down"))

            let t = start (guard r)
            Expect.throws (fun () -> t.Wait(TimeSpan.FromSeconds 10.) |> ignore) "the write fails"
            Expect.equal tries 3 "after the first try and two retries"
        }

        test "without retries a failed write fails at once" {
            let struct (guard, start) = starter (handlingWith 0)
            let mutable tries = 0

            let r =
                request (fun _ ->
                    tries <- tries + 1
                    Task.FromException(TimeoutException "down"))

            let t = start (guard r)
            Expect.isTrue t.IsFaulted "failed"
            Expect.equal tries 1 "tried once"
        }
    ]
