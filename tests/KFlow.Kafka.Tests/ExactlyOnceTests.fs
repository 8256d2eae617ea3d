// Tests for src/KFlow.Kafka/ExactlyOnce.fs: pipes that exactly-once mode cannot serve are refused at
// start, and on assignment a partition resumes past the applied offsets an in-memory store reports,
// skips the applied ones after a gap, and prunes what Kafka committed; a fenced write is final.
module KFlow.Kafka.Tests.ExactlyOnceTests

open System
open System.Collections.Concurrent
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka

/// An applied-offset store in memory: it reports `applied` and remembers what it was asked to prune.
type private MemoryStore(group: string, applied: Map<KFlow.TopicPartition, int64[]>) =
    let pruned = ConcurrentQueue<(KFlow.TopicPartition * int64) list>()

    member _.Pruned = List.ofSeq pruned

    member _.Store: AppliedOffsetStore = {
        GroupId = group
        Load =
            fun committed ->
                committed
                |> List.choose (fun (tp, c) ->
                    Map.tryFind tp applied
                    |> Option.map (fun a -> tp, a |> Array.filter (fun o -> o >= c)))
                |> Map.ofList
                |> Task.FromResult
        Prune =
            fun committed ->
                pruned.Enqueue committed
                Task.CompletedTask
    }

let private nowhere group =
    WorkflowOptions.create "eo" "127.0.0.1:1" group [ "t" ]

let private noWrite _ _ = Task.CompletedTask

/// A sink write of offset 0 that counts its tries and fails each with `error`.
let private failing (tries: int ref) (error: unit -> exn) : SinkRequest = {
    Sink = "db"
    Envelope = {
        Value = (0 :> obj)
        Tokens = []
        Key = ""
        Position = Position.create (KFlow.TopicPartition.create "t" 0) 0L
        Timestamp = DateTimeOffset.UnixEpoch
    }
    Write =
        fun _ ->
            tries.Value <- tries.Value + 1
            Task.FromException(error ())
    Substream = ""
    Pipelining = SinkPipelining.sequential
}

/// Runs `Pipe.source |> shape |> Pipe.sinkExactlyOnce` on a one-partition topic of 100 messages whose
/// group committed offset 10 and whose store reports `applied`, until the end offset is committed; then
/// `whileRunning store log`, and the stop. Returns the offsets the sink wrote (sorted), the handle and
/// the log.
let private resumeFrom10 (topic: string) (applied: int64[]) shape (whileRunning: MemoryStore -> Log -> unit) =
    use cluster = clusterWith topic 1 4 100
    let log = Log()

    do
        use consumer = ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig topic).Build()
        consumer.Commit [ TopicPartitionOffset(topic, Partition 0, Offset 10L) ]

    let store =
        MemoryStore(topic, Map.ofList [ KFlow.TopicPartition.create topic 0, applied ])

    let written = ConcurrentQueue<int64>()

    let pipe =
        Pipe.source<byte[]>
        |> shape
        |> Pipe.sinkExactlyOnce "db" store.Store (fun positions _ ->
            for p in positions do
                written.Enqueue p.Offset

            Task.CompletedTask)

    let handle =
        Workflow.run
            {
                options cluster log topic [ topic ] with
                    CommitInterval = TimeSpan.FromMilliseconds 200.
            }
            pipe

    waitUntil log (seconds 30.) "the end offset is committed" (fun () ->
        committed cluster topic topic 1 = [ 0, 100L ])

    whileRunning store log
    stopped log handle
    List.sort (List.ofSeq written), handle, log

let tests =
    testSequenced
    <| testList "ExactlyOnce" [
        test "a fenced write is neither retried in place nor dead-lettered; another failure is" {
            let options = {
                nowhere "g" with
                    OnFailure = DeadLetter "dlq"
                    SinkRetries = 2
                    SinkRetryBackoff = {
                        Backoff.defaults with
                            First = TimeSpan.FromMilliseconds 1.
                            Max = TimeSpan.FromMilliseconds 1.
                    }
            }

            let handling = FailureHandling.create (Counters "eo") options
            use _ = handling.DeadLetters.Value
            // Nothing to produce: a dead-lettered write succeeds at once.
            let guard =
                FailureHandling.guardWrite handling (fun () -> "db") (fun _ -> ValueSome [])

            let outcome (request: SinkRequest) =
                try
                    (request.Write(0 :> obj)).Wait()
                    None
                with e ->
                    Some e

            let fencedTries = ref 0

            let fenced =
                outcome (guard (failing fencedTries (fun () -> FencedWriteException "fenced")))

            Expect.isTrue (fenced |> Option.exists AppliedOffsets.isFenced) "the fenced write fails as fenced"
            Expect.equal fencedTries.Value 1 "tried once"
            let otherTries = ref 0
            let other = outcome (guard (failing otherTries (fun () -> exn "down")))
            Expect.isNone other "another failure is dead-lettered after its retries (the control)"
            Expect.equal otherTries.Value 3 "and retried twice in place"
        }

        test "Workflow.run refuses an exactly-once pipe with an unfold, saying why" {
            let pipe =
                Pipe.source<byte[]>
                |> Pipe.unfold (fun v -> [ v; v ])
                |> Pipe.sinkExactlyOnce "db" (MemoryStore("g", Map.empty).Store) noWrite

            Expect.throwsC (fun () -> Workflow.run (nowhere "g") pipe |> ignore) (fun e ->
                Expect.isTrue (e :? ArgumentException) "ArgumentException"
                Expect.stringContains e.Message "unfold" "names the stage")
        }

        test "Workflow.run refuses an exactly-once sink that records another consumer group" {
            let pipe =
                Pipe.source<byte[]>
                |> Pipe.sinkExactlyOnce "db" (MemoryStore("other", Map.empty).Store) noWrite

            Expect.throwsC (fun () -> Workflow.run (nowhere "g") pipe |> ignore) (fun e ->
                Expect.stringContains e.Message "WorkflowOptions.GroupId" "says what to give")
        }

        testCase
            "a partition resumes past the applied offsets after its committed one, skips applied ones after a gap, and prunes commits"
        <| fun () ->
            let tp = KFlow.TopicPartition.create "eo" 0

            let aggregated (source: Pipe<byte[], byte[]>) =
                source
                |> Pipe.demuxByKey (fun sub ->
                    sub
                    |> Pipe.aggregate (
                        Buffer.create {
                            Buffer.options with
                                MaxCount = Some 5
                                MaxAge = Some(TimeSpan.FromMilliseconds 100.)
                        }
                    ))

            let written, handle, log =
                resumeFrom10
                    "eo"
                    (Array.append [| 10L .. 39L |] [| 50L .. 59L |])
                    aggregated
                    (fun store log ->
                        waitUntil log (seconds 10.) "a prune up to the end offset" (fun () ->
                            store.Pruned |> List.exists (List.contains (tp, 100L))))

            Expect.equal
                written
                ([ 40L .. 49L ] @ [ 60L .. 99L ])
                "only the offsets not applied are written, each once"

            Expect.equal (log.Count "resuming at 40") 1 "resumed at 40, past 10..39"
            Expect.equal handle.Stats.Consumed 60L "50..59 are read and skipped, 10..39 not read at all"

        testCase "a partition whose applied offsets reach its end commits that end without reading a message"
        <| fun () ->
            let written, handle, _ = resumeFrom10 "eoend" [| 10L .. 99L |] id (fun _ _ -> ())
            Expect.isEmpty written "nothing is written again"
            Expect.equal handle.Stats.Consumed 0L "nothing is read: the partition resumed at its end"

        testCase "a stage splitting a message into several values fails the workflow in exactly-once mode"
        <| fun () ->
            use cluster = clusterWith "eosplit" 1 2 10
            let log = Log()

            let pipe =
                Pipe.source<byte[]>
                |> Pipe.stateful "twice" () (fun _ event () ->
                    match event with
                    | Message e -> (), Output.split [ e.Value; e.Value ] e
                    | _ -> (), Output.none)
                |> Pipe.sinkExactlyOnce "db" (MemoryStore("eosplit", Map.empty).Store) noWrite

            let handle = Workflow.run (options cluster log "eosplit" [ "eosplit" ]) pipe

            waitUntil log (seconds 30.) "the split is reported" (fun () ->
                handle.Health.LastFailure |> Option.exists (fun f -> f.Stage = "exactly-once"))

            let committedAt = committed cluster "eosplit" "eosplit" 1 |> List.exactlyOne |> snd
            Expect.isLessThanOrEqual committedAt 0L "nothing committed past the split message (offset 0)"
            handle.StopAsync().Wait(seconds 30.) |> ignore
    ]
