// Tests for src/KFlow.Kafka/Workflow.fs (and the incarnation and partition loops behind it): real
// Confluent.Kafka clients on the embedded cluster. Sequenced: they share the machine's cores.
module KFlow.Kafka.Tests.WorkflowTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Text
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Testing

let private keyOf (value: string) = value.Substring(0, value.IndexOf ':')
let private seqOf (value: string) = int (value.Substring(value.IndexOf ':' + 1))
let private seconds (n: float) = TimeSpan.FromSeconds n

/// A sink recording every value of a batch, asynchronously (so writes complete on other threads).
let private recordBatches (into: ConcurrentQueue<string>) (batch: string list) =
    Task.Run(fun () ->
        for v in batch do
            into.Enqueue v)

/// Checks that every key's values arrived in order, each exactly once, and how many there are.
let private expectOrderedOnce (sunk: string seq) (count: int) =
    let values = List.ofSeq sunk
    Expect.equal values.Length count "every message sunk exactly once (count)"
    Expect.equal (values |> List.distinct |> List.length) count "no message sunk twice"

    for key, vs in values |> List.groupBy keyOf do
        Expect.sequenceEqual (vs |> List.map seqOf) [ 0 .. vs.Length - 1 ] $"key {key} in order"

let private stopped (log: Log) (handle: WorkflowHandle) =
    let stop = handle.StopAsync()

    if not (stop.Wait(seconds 30.)) then
        failtestf "StopAsync did not finish within 30 s.\nLog:\n%s" log.Tail

    Expect.equal handle.Completion.Status TaskStatus.RanToCompletion $"a clean stop.\nLog:\n{log.Tail}"

let private endToEnd =
    test "100,000 keyed messages over 8 partitions go through map, demux, aggregate and sink exactly once, in key order, and are all committed" {
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("orders", 8)
        let n = 100_000
        produceKeyed cluster "orders" 300 n
        let sunk = ConcurrentQueue<string>()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map Encoding.UTF8.GetString
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 100))
            |> Pipe.sink "record" (recordBatches sunk)

        let log = Log()
        let clock = Stopwatch.StartNew()
        let handle = Workflow.run (options cluster log "e2e" [ "orders" ]) pipe
        waitUntil log (seconds 90.) "every message is consumed" (fun () -> handle.Stats.Consumed >= int64 n)
        let consumed = clock.Elapsed
        // 300 keys over 8 partitions: each key's last partial batch waits for the stop's flush.
        Expect.isLessThan sunk.Count n "partial batches are still buffered before the stop"
        stopped log handle
        let stats = handle.Stats
        expectOrderedOnce sunk n

        Expect.equal
            (committed cluster "e2e" "orders" 8)
            (endOffsets cluster "orders" 8)
            "the committed offsets are the end offsets"

        Expect.equal stats.Failures 0L "no failure"

        printfn
            "runtime e2e: %d messages consumed in %.2f s including the group join (%.0f msg/s); peak in flight %d"
            n
            consumed.TotalSeconds
            (float n / consumed.TotalSeconds)
            stats.PeakInFlightMessages
    }

let private gracefulStop =
    test "a stop flushes the buffered aggregates, sinks them and commits them; before it nothing buffered is committed" {
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("buffered", 1)
        produceKeyed cluster "buffered" 1 50
        let sunk = ConcurrentQueue<string>()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map Encoding.UTF8.GetString
            |> Pipe.aggregate (Buffer.count 1000)
            |> Pipe.sink "record" (recordBatches sunk)

        let log = Log()
        let options = { options cluster log "buffered" [ "buffered" ] with CommitInterval = TimeSpan.FromMilliseconds 100. }
        let handle = Workflow.run options pipe
        waitUntil log (seconds 30.) "50 messages are consumed" (fun () -> handle.Stats.Consumed >= 50L)
        Thread.Sleep 300 // three commit intervals: a wrong commit would show
        Expect.isEmpty sunk "nothing sunk: the batch is not full"
        Expect.isTrue (committed cluster "buffered" "buffered" 1 |> List.forall (fun (_, o) -> o <= 0L)) "nothing committed past the buffer"
        stopped log handle
        expectOrderedOnce sunk 50
        Expect.equal (committed cluster "buffered" "buffered" 1) [ 0, 50L ] "the flushed batch is committed"
    }

let private gaps =
    test "offsets left by aborted transactions and their markers never stall the commits" {
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("gaps", 1)
        let config = cluster.ProducerConfig()
        config.TransactionalId <- "gaps-producer"
        use producer = ProducerBuilder<string, string>(config).Build()
        producer.InitTransactions(seconds 10.)

        let transaction (prefix: string) (count: int) (commit: bool) =
            producer.BeginTransaction()

            for i in 0 .. count - 1 do
                producer.Produce("gaps", Confluent.Kafka.Message<_, _>(Key = prefix, Value = $"{prefix}:{i}"))

            producer.Flush(seconds 10.) |> ignore

            if commit then
                producer.CommitTransaction(seconds 10.)
            else
                producer.AbortTransaction(seconds 10.)

        transaction "a" 10 true
        transaction "x" 5 false
        transaction "b" 10 true
        let sunk = ConcurrentQueue<string>()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map Encoding.UTF8.GetString
            |> Pipe.sink "record" (fun v -> recordBatches sunk [ v ])

        let log = Log()
        let handle = Workflow.run (options cluster log "gaps" [ "gaps" ]) pipe
        waitUntil log (seconds 30.) "20 messages are sunk" (fun () -> sunk.Count >= 20)
        let ends = endOffsets cluster "gaps" 1
        // The periodic commit (no stop yet) must get past every gap, markers included.
        waitUntil log (seconds 30.) "the end offset is committed" (fun () -> committed cluster "gaps" "gaps" 1 = ends)
        stopped log handle
        expectOrderedOnce sunk 20
        Expect.isFalse (sunk |> Seq.exists (fun v -> v.StartsWith "x")) "aborted messages are not read"
        Expect.equal (snd ends[0]) 28L "10 + marker + 5 aborted + marker + 10 + marker"
    }

let private slowSink =
    test "a slow sink pauses intake at the in-flight limit and resumes it below the threshold, without loss" {
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("slow", 2)
        let n = 3000
        produceKeyed cluster "slow" 10 n
        let sunk = ConcurrentQueue<string>()
        let mutable inPipe = 0
        let mutable peakInPipe = 0

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map (fun bytes ->
                let now = Interlocked.Increment &inPipe
                let mutable peak = Volatile.Read &peakInPipe

                while now > peak && Interlocked.CompareExchange(&peakInPipe, now, peak) <> peak do
                    peak <- Volatile.Read &peakInPipe

                Encoding.UTF8.GetString bytes)
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 5))
            |> Pipe.sink "slow" (fun (batch: string list) ->
                task {
                    do! Task.Delay 2

                    for v in batch do
                        sunk.Enqueue v

                    Interlocked.Add(&inPipe, -batch.Length) |> ignore
                })

        let log = Log()
        let limit = 200

        let options = {
            options cluster log "slow" [ "slow" ] with
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxInFlightMessages = limit
                        ResumeAt = 0.5
                }
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 60.) "every message is sunk" (fun () -> sunk.Count >= n)
        stopped log handle
        let stats = handle.Stats
        expectOrderedOnce sunk n
        Expect.isGreaterThanOrEqual stats.Pauses 1L "intake paused"
        Expect.isGreaterThanOrEqual stats.Resumes 1L "intake resumed"
        Expect.isLessThanOrEqual stats.PeakInFlightMessages (int64 limit) "in flight never above the limit"
        Expect.isLessThanOrEqual peakInPipe limit "the pipe never held more than the limit"
        Expect.equal (committed cluster "slow" "slow" 2) (endOffsets cluster "slow" 2) "all committed"
        printfn "runtime slow sink: %d pauses, %d resumes, peak in flight %d (limit %d)" stats.Pauses stats.Resumes stats.PeakInFlightMessages limit
    }

let private brokerDown =
    test "a broker down for a few seconds mid-stream loses nothing" {
        use cluster = EmbeddedKafka.start 1
        cluster.CreateTopic("flaky", 4)
        let n = 20_000
        produceKeyed cluster "flaky" 100 n
        let sunk = ConcurrentQueue<string>()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map Encoding.UTF8.GetString
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 10))
            |> Pipe.sink "record" (fun (batch: string list) ->
                task {
                    do! Task.Delay 1

                    for v in batch do
                        sunk.Enqueue v
                })

        let log = Log()

        let options = {
            options cluster log "flaky" [ "flaky" ] with
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxInFlightMessages = 2000
                }
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 30.) "a quarter is sunk" (fun () -> sunk.Count >= n / 4)
        cluster.TakeBrokerDown 1
        Thread.Sleep 3000
        cluster.BringBrokerUp 1
        waitUntil log (seconds 90.) "every message is sunk" (fun () -> (Seq.distinct sunk |> Seq.length) >= n)
        stopped log handle
        let distinct = sunk |> Seq.distinct |> List.ofSeq
        Expect.equal distinct.Length n "every message sunk at least once"
        Expect.equal (committed cluster "flaky" "flaky" 4) (endOffsets cluster "flaky" 4) "all committed"
        printfn "runtime broker down: %d writes for %d messages (%d duplicates)" sunk.Count n (sunk.Count - n)
    }

/// A topic of 200 messages (one partition) and a sink that fails on message 100 while `broken`.
let private poisoned (cluster: EmbeddedKafkaCluster) (topic: string) (broken: bool ref) (sunk: ConcurrentQueue<string>) =
    cluster.CreateTopic(topic, 1)
    produceKeyed cluster topic 1 200

    Pipe.source<byte[]>
    |> Pipe.map Encoding.UTF8.GetString
    |> Pipe.sink "record" (fun (v: string) ->
        task {
            do! Task.Yield()

            if broken.Value && v = "k0:100" then
                failwith "the sink cannot write k0:100"

            sunk.Enqueue v
        })

let private failingSink =
    test "a failing sink never lets the commit point pass its message; the workflow restarts until it succeeds" {
        use cluster = EmbeddedKafka.start 1
        let broken = ref true
        let sunk = ConcurrentQueue<string>()
        let pipe = poisoned cluster "poison" broken sunk
        let log = Log()
        let handle = Workflow.run (options cluster log "poison" [ "poison" ]) pipe
        waitUntil log (seconds 30.) "two restarts" (fun () -> handle.Stats.Restarts >= 2L)

        Expect.isTrue
            (committed cluster "poison" "poison" 1 |> List.forall (fun (_, o) -> o <= 100L))
            "nothing committed past offset 100"

        Expect.isFalse (Seq.contains "k0:100" sunk) "the failing message was never written"
        broken.Value <- false // the fix is deployed
        waitUntil log (seconds 30.) "every message is sunk" (fun () -> (Seq.distinct sunk |> Seq.length) >= 200)
        stopped log handle
        Expect.equal (committed cluster "poison" "poison" 1) [ 0, 200L ] "all committed after the fix"
        Expect.isGreaterThanOrEqual handle.Stats.Failures 2L "the failures are counted"
        Expect.isGreaterThan (log.Count "stage 'record' failed") 0 "the failure is logged with its stage"
    }

let private halt =
    test "under Halt a failure faults Completion with the topic, partition, offset and stage" {
        use cluster = EmbeddedKafka.start 1
        let sunk = ConcurrentQueue<string>()
        let pipe = poisoned cluster "halt" (ref true) sunk
        let log = Log()

        let handle =
            Workflow.run { options cluster log "halt" [ "halt" ] with OnFailure = Halt } pipe

        let ended = handle.Completion.ContinueWith(fun (_: Task) -> ()).Wait(seconds 30.)
        Expect.isTrue ended $"the workflow halted.\nLog:\n{log.Tail}"
        Expect.isTrue handle.Completion.IsFaulted "Completion faulted"

        match handle.Completion.Exception |> Option.ofObj |> Option.map _.InnerException with
        | Some(:? WorkflowFailedException as e) ->
            Expect.equal e.TopicPartition (ValueSome(TopicPartition.create "halt" 0)) "the partition"
            Expect.equal e.Offset (ValueSome 100L) "the offset"
            Expect.equal e.Stage "record" "the stage"
            Expect.stringContains e.Message "halt[0] at offset 100" "the message says where"
        | other -> failtestf "expected a WorkflowFailedException, got %O" other

        Expect.isTrue (committed cluster "halt" "halt" 1 |> List.forall (fun (_, o) -> o <= 100L)) "nothing committed past it"
        handle.StopAsync().Wait(seconds 10.) |> ignore
    }

/// Two instances in one group share 4 partitions; the first stops mid-stream and the second takes
/// over. Returns the takeover time.
let private scaleOut (strategy: string option) =
    use cluster = EmbeddedKafka.start 1
    let topic = "shared"
    cluster.CreateTopic(topic, 4)
    let n = 8000
    produceKeyed cluster topic 40 n
    let sunk = ConcurrentQueue<string>()

    let pipe =
        Pipe.source<byte[]>
        |> Pipe.map Encoding.UTF8.GetString
        |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 10))
        |> Pipe.sink "record" (fun (batch: string list) ->
            task {
                do! Task.Delay 3

                for v in batch do
                    sunk.Enqueue v
            })

    let log = Log()

    let options name =
        let o = options cluster log "shared" [ topic ]

        {
            o with
                Name = name
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxInFlightMessages = 400
                }
                Properties =
                    o.Properties
                    @ (strategy |> Option.map (fun s -> "partition.assignment.strategy", s) |> Option.toList)
        }

    let a = Workflow.run (options "a") pipe
    waitUntil log (seconds 30.) "a has partitions" (fun () -> a.Stats.AssignedPartitions > 0)
    let b = Workflow.run (options "b") pipe
    waitUntil log (seconds 30.) "both share the partitions" (fun () -> a.Stats.AssignedPartitions > 0 && b.Stats.AssignedPartitions > 0)
    Expect.equal (a.Stats.AssignedPartitions + b.Stats.AssignedPartitions) 4 "4 partitions shared"
    Expect.isLessThan sunk.Count n "mid-stream"
    stopped log a
    let clock = Stopwatch.StartNew()
    waitUntil log (seconds 30.) "b has every partition" (fun () -> b.Stats.AssignedPartitions = 4)
    let takeover = clock.Elapsed
    waitUntil log (seconds 60.) "every message is sunk" (fun () -> (Seq.distinct sunk |> Seq.length) >= n)
    stopped log b
    Expect.equal (sunk |> Seq.distinct |> Seq.length) n "every message sunk at least once"
    Expect.equal (committed cluster "shared" topic 4) (endOffsets cluster topic 4) "all committed"
    Expect.isGreaterThan a.Stats.Consumed 0L "a took part"
    Expect.isGreaterThan b.Stats.Consumed 0L "b took part"

    printfn
        "runtime scale-out (%s): takeover in %.2f s; a consumed %d, b %d; %d duplicates"
        (defaultArg strategy "eager")
        takeover.TotalSeconds
        a.Stats.Consumed
        b.Stats.Consumed
        (sunk.Count - n)

let private badProperty =
    test "an unknown librdkafka property fails Workflow.run with an ArgumentException naming it" {
        let log = Log()

        let options = {
            WorkflowOptions.create "bad" "127.0.0.1:1" "bad" [ "t" ] with
                Properties = [ "no.such.property", "1" ]
                Log = log.Add
        }

        Expect.throwsC (fun () -> Workflow.run options Pipe.source<byte[]> |> ignore) (fun e ->
            Expect.isTrue (e :? ArgumentException) "an ArgumentException"
            Expect.stringContains e.Message "no.such.property" "names the property")
    }

let tests =
    testSequenced
    <| testList "Workflow" [
        endToEnd
        gracefulStop
        gaps
        slowSink
        brokerDown
        failingSink
        halt
        test "two instances with eager assignment share the partitions and one takes over when the other stops" {
            scaleOut None
        }
        test "two instances with cooperative-sticky assignment share the partitions and one takes over when the other stops" {
            scaleOut (Some "cooperative-sticky")
        }
        badProperty
    ]
