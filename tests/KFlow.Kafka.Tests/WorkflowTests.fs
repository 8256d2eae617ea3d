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

let private seqOf (value: string) =
    int (value.Substring(value.IndexOf ':' + 1))


/// Batches of `count`, or fewer once the oldest waited 200 ms: a revoke's flush shifts batch
/// boundaries, so a key's last batch may stay partial (without an age it would wait for the
/// demux's idle eviction, 60 s, or the stop).
let private batches count =
    Buffer.create {
        Buffer.options with
            MaxCount = Some count
            MaxAge = Some(TimeSpan.FromMilliseconds 200.)
    }

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

let private endToEnd =
    testCase
        "100,000 keyed messages over 8 partitions go through map, demux, aggregate and sink exactly once, in key order, and are all committed"
    <| fun () ->
        let n = 100_000
        use cluster = clusterWith "orders" 8 120 n
        let sunk = ConcurrentQueue<string>()

        let pipe =
            decoded ()
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 100))
            |> Pipe.sink "record" (recordBatches sunk)

        let log = Log()
        let clock = Stopwatch.StartNew()
        let handle = Workflow.run (options cluster log "e2e" [ "orders" ]) pipe
        // 120 keys (833 or 834 messages each): every key's last batch is partial (33 or 34) and
        // waits for the stop's flush; the 96,000 others are sunk in full batches before it. At most
        // 120 × 99 messages are buffered, under the resume threshold (25,000).
        let full = n - (40 * 34 + 80 * 33)
        waitUntil log (seconds 90.) "every full batch is sunk" (fun () -> sunk.Count >= full)
        let processed = clock.Elapsed
        Thread.Sleep 200 // a stray batch of a partial buffer would show
        Expect.equal sunk.Count full "the partial batches are still buffered before the stop"
        Expect.equal handle.Stats.Consumed (int64 n) "every message consumed"
        stopped log handle
        let stats = handle.Stats
        expectOrderedOnce sunk n

        Expect.equal
            (committed cluster "e2e" "orders" 8)
            (endOffsets cluster "orders" 8)
            "the committed offsets are the end offsets"

        Expect.equal stats.Failures 0L "no failure"

        printfn
            "runtime e2e: %d messages in full batches sunk %.2f s after Workflow.run, group join included (%.0f msg/s); peak in flight %d"
            full
            processed.TotalSeconds
            (float full / processed.TotalSeconds)
            stats.PeakInFlightMessages

let private gracefulStop =
    testCase
        "a stop flushes the buffered aggregates, sinks them and commits them; before it nothing buffered is committed"
    <| fun () ->
        use cluster = clusterWith "buffered" 1 1 50
        let sunk = ConcurrentQueue<string>()

        let pipe =
            decoded ()
            |> Pipe.aggregate (Buffer.count 1000)
            |> Pipe.sink "record" (recordBatches sunk)

        let log = Log()

        let options = {
            options cluster log "buffered" [ "buffered" ] with
                CommitInterval = TimeSpan.FromMilliseconds 100.
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 30.) "50 messages are consumed" (fun () -> handle.Stats.Consumed >= 50L)
        Thread.Sleep 300 // three commit intervals: a wrong commit would show
        Expect.isEmpty sunk "nothing sunk: the batch is not full"

        expectNotCommittedPast cluster "buffered" "buffered" 0L

        stopped log handle
        expectOrderedOnce sunk 50
        Expect.equal (committed cluster "buffered" "buffered" 1) [ 0, 50L ] "the flushed batch is committed"

let private gaps =
    testCase "offsets taken by transaction markers never stall the commits"
    <| fun () ->
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
        let ends = endOffsets cluster "gaps" 1
        Expect.equal (snd ends[0]) 28L "10 + marker + 5 aborted + marker + 10 + marker"
        let sunk = ConcurrentQueue<string>()

        let pipe = decoded () |> Pipe.sink "record" (fun v -> recordBatches sunk [ v ])

        let log = Log()
        let handle = Workflow.run (options cluster log "gaps" [ "gaps" ]) pipe

        waitUntil log (seconds 30.) "the a and b messages are sunk" (fun () ->
            sunk |> Seq.filter (fun v -> not (v.StartsWith "x")) |> Seq.length >= 20)
        // The periodic commit (no stop yet) gets past the three markers, the last one included.
        waitEndOffsetsCommitted cluster log (seconds 30.) "gaps" "gaps" 1

        stopped log handle
        expectOrderedOnce (sunk |> Seq.filter (fun v -> not (v.StartsWith "x"))) 20
        // librdkafka's mock cluster does not filter aborted transactions for read_committed
        // consumers (a real broker does): the 5 aborted messages arrive too (docs/runtime.md).
        let aborted = sunk |> Seq.filter (fun v -> v.StartsWith "x") |> Seq.length
        Expect.isTrue (aborted = 0 || aborted = 5) "aborted messages: none (real broker) or all once (mock)"

/// Offsets 0-32 of a partition holding compacted batches: a:0-4 at 0-4, then a batch spanning 5-16 of
/// which compaction kept 5, 8, 9 and 14 (c:0-3), b:0-4 at 17-21, a batch spanning 22-27 of which 22
/// and 24 remain (d:0-1), and e:0-4 at 28-32: gaps inside batches and at their ends. (A real broker
/// compacts only closed segments, so uncompacted messages follow, as here.)
let private compactedPartition (cluster: EmbeddedKafkaCluster) (topic: string) =
    cluster.CreateTopic(topic, 1)
    use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()

    let plain (prefix: string) =
        for i in 0..4 do
            producer.Produce(topic, Confluent.Kafka.Message<_, _>(Key = prefix, Value = $"{prefix}:{i}"))

        producer.Flush(seconds 10.) |> ignore

    plain "a"

    CompactedLog.produceBatch
        cluster.BootstrapServers
        topic
        0
        (CompactedLog.batch 12 [ 0, "c", "c:0"; 3, "c", "c:1"; 4, "c", "c:2"; 9, "c", "c:3" ])

    plain "b"

    CompactedLog.produceBatch
        cluster.BootstrapServers
        topic
        0
        (CompactedLog.batch 6 [ 0, "d", "d:0"; 2, "d", "d:1" ])

    plain "e"

/// The offsets a compacted partition holds, and their values.
let private compactedOffsets = [
    for i in 0..4 -> int64 i, $"a:{i}"
    yield! [ 5L, "c:0"; 8L, "c:1"; 9L, "c:2"; 14L, "c:3" ]
    for i in 0..4 -> int64 (17 + i), $"b:{i}"
    yield! [ 22L, "d:0"; 24L, "d:1" ]
    for i in 0..4 -> int64 (28 + i), $"e:{i}"
]

let private compactionGaps =
    testCase "offsets missing from compacted batches never stall the commits and lose nothing"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        compactedPartition cluster "compacted"
        Expect.equal (endOffsets cluster "compacted" 1) [ 0, 33L ] "the batches' spans are reserved"

        // What a plain consumer reads: the embedded partition looks compacted.
        let read =
            use consumer =
                ConsumerBuilder<string, string>(cluster.ConsumerConfig "compacted-reader").Build()

            consumer.Assign(TopicPartitionOffset("compacted", Partition 0, Offset 0L))

            [
                for _ in compactedOffsets ->
                    let cr = consumer.Consume(seconds 10.)

                    if isNull cr then
                        failtest "the plain consumer read fewer messages than the partition holds"

                    cr.Offset.Value, cr.Message.Value
            ]

        Expect.equal read compactedOffsets "a plain consumer reads the offsets compaction kept"

        let sunk = ConcurrentQueue<int64 * string>()

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.mapEnvelope (fun e -> e.Position.Offset, Encoding.UTF8.GetString e.Value)
            |> Pipe.sink "record" (fun v ->
                sunk.Enqueue v
                Task.CompletedTask)

        let log = Log()
        let handle = Workflow.run (options cluster log "compacted" [ "compacted" ]) pipe

        waitUntil log (seconds 30.) "every kept message is sunk" (fun () ->
            sunk.Count >= compactedOffsets.Length)
        // The periodic commit (no stop yet) gets past every gap.
        waitEndOffsetsCommitted cluster log (seconds 30.) "compacted" "compacted" 1
        stopped log handle
        Expect.equal (List.ofSeq sunk) compactedOffsets "each kept message sunk once, in offset order"
        Expect.equal (committed cluster "compacted" "compacted" 1) [ 0, 33L ] "committed to the end"

let private asyncMaps =
    testCase "async maps run their calls concurrently and pass results on in input order"
    <| fun () ->
        let n = 2000
        use cluster = clusterWith "calls" 2 20 n
        let sunk = ConcurrentQueue<string>()
        let mutable running = 0
        let mutable peak = 0

        let call (v: string) = task {
            let now = Interlocked.Increment &running
            let mutable seen = Volatile.Read &peak

            while now > seen && Interlocked.CompareExchange(&peak, now, seen) <> seen do
                seen <- Volatile.Read &peak

            do! Task.Delay(1 + (seqOf v % 3))
            Interlocked.Decrement &running |> ignore
            return v
        }

        let pipe =
            decoded ()
            |> Pipe.mapAsync 8 call
            |> Pipe.sink "record" (fun v -> recordBatches sunk [ v ])

        let log = Log()

        runUntilSunk cluster log (seconds 60.) sunk n (options cluster log "calls" [ "calls" ]) pipe
        |> ignore

        expectOrderedOnce sunk n
        Expect.isGreaterThan peak 1 "calls overlapped"
        Expect.isLessThanOrEqual peak 16 "at most 8 per partition"

let private slowSink =
    testCase
        "a slow sink pauses intake at the in-flight limit and resumes it below the threshold, without loss"
    <| fun () ->
        let n = 3000
        use cluster = clusterWith "slow" 2 10 n
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
            |> Pipe.sink "slow" (fun (batch: string list) -> task {
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

        let stats = (runUntilSunk cluster log (seconds 60.) sunk n options pipe).Stats
        expectOrderedOnce sunk n
        Expect.isGreaterThanOrEqual stats.Pauses 1L "intake paused"
        Expect.isGreaterThanOrEqual stats.Resumes 1L "intake resumed"
        Expect.isLessThanOrEqual stats.PeakInFlightMessages (int64 limit) "in flight never above the limit"
        Expect.isLessThanOrEqual peakInPipe limit "the pipe never held more than the limit"

        printfn
            "runtime slow sink: %d pauses, %d resumes, peak in flight %d (limit %d)"
            stats.Pauses
            stats.Resumes
            stats.PeakInFlightMessages
            limit

let private stallFlush =
    testCase
        "buffers holding more than the in-flight limit are flushed when intake stalls, instead of waiting for the idle eviction"
    <| fun () ->
        let n = 5000
        use cluster = clusterWith "stall" 2 50 n
        let sunk = ConcurrentQueue<string>()

        // 100 messages per key never fill a batch of 1,000: only a flush empties the buffers.
        let pipe =
            decoded ()
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 1000))
            |> Pipe.sink "record" (recordBatches sunk)

        let log = Log()

        let options = {
            options cluster log "stall" [ "stall" ] with
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxInFlightMessages = 1000
                        FlushWhenStalled = TimeSpan.FromMilliseconds 200.
                }
        }

        let handle = runUntilSunk cluster log (seconds 30.) sunk n options pipe
        expectOrderedOnce sunk n
        Expect.isGreaterThanOrEqual handle.Stats.StallFlushes 1L "stalls were flushed"
        Expect.isLessThanOrEqual handle.Stats.PeakInFlightMessages 1000L "the limit held"

let private partitionLimit =
    testCase "a partition reaching its open-offset limit pauses alone and never holds more"
    <| fun () ->
        let n = 1000
        use cluster = clusterWith "open" 2 16 n
        let sunk = ConcurrentQueue<string>()
        let opened = Array.zeroCreate<int> 2
        let peaks = Array.zeroCreate<int> 2

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.mapEnvelope (fun e ->
                let p = e.Position.TopicPartition.Partition
                let now = Interlocked.Increment &opened[p]

                lock peaks (fun () -> peaks[p] <- max peaks[p] now)
                p, Encoding.UTF8.GetString e.Value)
            |> Pipe.sink "slow" (fun (p: int, v: string) -> task {
                do! Task.Delay 1
                sunk.Enqueue v
                Interlocked.Decrement &opened[p] |> ignore
            })

        let log = Log()
        let limit = 50

        let options = {
            options cluster log "open" [ "open" ] with
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxOpenOffsetsPerPartition = limit
                }
        }

        let handle = runUntilSunk cluster log (seconds 60.) sunk n options pipe
        expectOrderedOnce sunk n
        Expect.isGreaterThanOrEqual handle.Stats.PartitionPauses 2L "partitions paused on their own limit"
        Expect.equal handle.Stats.Pauses 0L "the workflow-wide limit was never reached"
        Expect.all peaks (fun peak -> peak <= limit) "no partition held more than its limit"

let private queueLimit =
    testCase
        "intake holds while the partition loops' queues are full, pauses after the hold, and loses nothing"
    <| fun () ->
        let n = 5_000
        use cluster = clusterWith "queued" 1 16 n
        let sunk = ConcurrentQueue<string>()
        use gate = new ManualResetEventSlim(false)

        // The first message blocks the partition loop until the gate opens: what is consumed meanwhile
        // waits in the loop's queue.
        let pipe =
            decoded ()
            |> Pipe.map (fun v ->
                gate.Wait()
                v)
            |> Pipe.sink "record" (fun (v: string) ->
                sunk.Enqueue v
                Task.CompletedTask)

        let log = Log()
        let limit = 100

        let options = {
            options cluster log "queued" [ "queued" ] with
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxQueuedMessages = limit
                }
        }

        let handle = Workflow.run options pipe

        waitUntil log (seconds 30.) "the partition is paused" (fun () -> handle.Stats.PausedPartitions = 1)

        // Without the queue gate all 5,000 would be routed (the in-flight limit is 50,000).
        let routed = handle.Stats.InFlightMessages
        Expect.isLessThanOrEqual routed (int64 (limit + 512)) "at most the limit and one burst consumed"
        Expect.isEmpty sunk "nothing passed the blocked loop"
        Expect.isGreaterThanOrEqual handle.Stats.QueueHolds 1L "the hold is counted"
        gate.Set()
        waitUntil log (seconds 60.) $"{n} values are sunk" (fun () -> sunk.Count >= n)
        stopped log handle
        expectEndOffsetsCommitted cluster options
        expectOrderedOnce sunk n
        Expect.isGreaterThanOrEqual (log.Count "wait for their partition loops") 1 "the pause is logged"

let private boundedStop =
    testCase
        "a stop whose writes never finish returns within twice the drain timeout and commits only what finished"
    <| fun () ->
        use cluster = clusterWith "hung" 1 1 20
        let sunk = ConcurrentQueue<string>()
        let never = TaskCompletionSource()

        // Messages 0-9 are written; from 10 on every write hangs.
        let pipe =
            decoded ()
            |> Pipe.sink "hangs" (fun (v: string) ->
                if seqOf v < 10 then
                    sunk.Enqueue v
                    Task.CompletedTask
                else
                    never.Task)

        let log = Log()
        let drain = TimeSpan.FromSeconds 1.

        let options = {
            options cluster log "hung" [ "hung" ] with
                DrainTimeout = drain
        }

        let handle = Workflow.run options pipe
        waitUntil log (seconds 30.) "every message is in flight" (fun () -> handle.Stats.Consumed >= 20L)
        waitUntil log (seconds 30.) "the first ten are written" (fun () -> sunk.Count >= 10)
        let clock = Diagnostics.Stopwatch.StartNew()
        // Twice the drain timeout, and slack for a loaded machine: not a speed check.
        let returned = handle.StopAsync().Wait(drain * 2. + seconds 10.)
        Expect.isTrue returned $"the stop returned (after {clock.Elapsed}).\nLog:\n{log.Tail}"
        Expect.equal handle.Completion.Status TaskStatus.RanToCompletion "a clean stop"
        Expect.equal (committed cluster "hung" "hung" 1) [ 0, 10L ] "committed up to the first hung write"
        Expect.isGreaterThanOrEqual (log.Count "the stop drain did not finish") 1 "the timeout is logged"

let private brokerDown =
    testCase "a broker down for a few seconds mid-stream loses nothing"
    <| fun () ->
        let n = 20_000
        use cluster = clusterWith "flaky" 4 100 n
        let sunk = ConcurrentQueue<string>()

        let pipe =
            decoded ()
            |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (batches 10))
            |> Pipe.sink "record" (fun (batch: string list) -> task {
                do! Task.Delay 1

                for v in batch do
                    sunk.Enqueue v
            })

        let log = Log()

        let options = {
            options cluster log "flaky" [ "flaky" ] with
                CommitInterval = TimeSpan.FromMilliseconds 200.
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
        // After the outage it may still be re-reading what it had sunk but not committed.
        waitEndOffsetsCommitted cluster log (seconds 60.) "flaky" "flaky" 4

        stopped log handle
        let distinct = sunk |> Seq.distinct |> List.ofSeq
        Expect.equal distinct.Length n "every message sunk at least once"
        Expect.equal (committed cluster "flaky" "flaky" 4) (endOffsets cluster "flaky" 4) "all committed"
        printfn "runtime broker down: %d writes for %d messages (%d duplicates)" sunk.Count n (sunk.Count - n)

/// A topic of 200 messages (one partition) and a sink that fails on message 100 while `broken`.
let private poisoned
    (cluster: EmbeddedKafkaCluster)
    (topic: string)
    (broken: bool ref)
    (sunk: ConcurrentQueue<string>)
    =
    cluster.CreateTopic(topic, 1)
    produceKeyed cluster topic 1 200

    decoded ()
    |> Pipe.sink "record" (fun (v: string) -> task {
        do! Task.Yield()

        if broken.Value && v = "k0:100" then
            failwith "the sink cannot write k0:100"

        sunk.Enqueue v
    })

let private failingSink =
    testCase
        "a failing sink never lets the commit point pass its message; the workflow restarts until it succeeds"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        let broken = ref true
        let sunk = ConcurrentQueue<string>()
        let pipe = poisoned cluster "poison" broken sunk
        let log = Log()
        let handle = Workflow.run (options cluster log "poison" [ "poison" ]) pipe
        waitUntil log (seconds 30.) "two restarts" (fun () -> handle.Stats.Restarts >= 2L)

        expectNotCommittedPast cluster "poison" "poison" 100L

        Expect.isFalse (Seq.contains "k0:100" sunk) "the failing message was never written"
        broken.Value <- false // the fix is deployed

        waitUntil log (seconds 30.) "every message is sunk" (fun () ->
            (Seq.distinct sunk |> Seq.length) >= 200)

        stopped log handle
        Expect.equal (committed cluster "poison" "poison" 1) [ 0, 200L ] "all committed after the fix"
        Expect.isGreaterThanOrEqual handle.Stats.Failures 2L "the failures are counted"
        Expect.isGreaterThan (log.Count "stage 'record' failed") 0 "the failure is logged with its stage"

let private halt =
    testCase "under Halt a failure faults Completion with the topic, partition, offset and stage"
    <| fun () ->
        use cluster = EmbeddedKafka.start 1
        let sunk = ConcurrentQueue<string>()
        let pipe = poisoned cluster "halt" (ref true) sunk
        let log = Log()

        let handle =
            Workflow.run
                {
                    options cluster log "halt" [ "halt" ] with
                        OnFailure = Halt
                }
                pipe

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

        expectNotCommittedPast cluster "halt" "halt" 100L

        handle.StopAsync().Wait(seconds 10.) |> ignore

/// Two instances in one group share 4 partitions; the first stops mid-stream and the second takes
/// over. Returns the takeover time.
let private scaleOut (strategy: string option) =
    use cluster = EmbeddedKafka.start 1
    let topic = "shared"
    cluster.CreateTopic(topic, 4)
    let n = 8000
    produceKeyed cluster topic 40 (n / 2)
    let sunk = ConcurrentQueue<string>()

    let pipe =
        decoded ()
        |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (batches 10))
        |> Pipe.sink "record" (fun (batch: string list) -> task {
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
                CommitInterval = TimeSpan.FromMilliseconds 200.
                Backpressure = {
                    WorkflowOptions.backpressure with
                        MaxInFlightMessages = 2000
                }
                Properties =
                    o.Properties
                    @ (strategy
                       |> Option.map (fun s -> "partition.assignment.strategy", s)
                       |> Option.toList)
        }

    let a = Workflow.run (options "a") pipe
    waitUntil log (seconds 30.) "a has partitions" (fun () -> a.Stats.AssignedPartitions > 0)
    let b = Workflow.run (options "b") pipe

    waitUntil log (seconds 30.) "both share the partitions" (fun () ->
        a.Stats.AssignedPartitions > 0 && b.Stats.AssignedPartitions > 0)

    Expect.equal (a.Stats.AssignedPartitions + b.Stats.AssignedPartitions) 4 "4 partitions shared"
    // The second half arrives while both run; a stops right away, mid-stream.
    produceRange cluster topic 40 (n / 2) (n / 2)
    stopped log a
    let clock = Stopwatch.StartNew()
    waitUntil log (seconds 30.) "b has every partition" (fun () -> b.Stats.AssignedPartitions = 4)
    let takeover = clock.Elapsed
    waitUntil log (seconds 60.) "every message is sunk" (fun () -> (Seq.distinct sunk |> Seq.length) >= n)
    // b may still be re-reading what a had sunk but not committed: wait for its commits.
    waitEndOffsetsCommitted cluster log (seconds 60.) "shared" topic 4

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

let private staleCompletion =
    testCase
        "a write that finishes after its partition was revoked is refused by the ledger and changes nothing"
    <| fun () ->
        use cluster = clusterWith "stale" 2 8 40
        let sunk = ConcurrentQueue<string>()
        let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

        let pipe =
            decoded ()
            |> Pipe.sink "gated" (fun (v: string) -> task {
                do! gate.Task
                sunk.Enqueue v
            })

        let log = Log()

        let options name = {
            options cluster log "stale" [ "stale" ] with
                Name = name
                DrainTimeout = TimeSpan.FromMilliseconds 300.
                CommitInterval = TimeSpan.FromMilliseconds 200.
                Properties =
                    (options cluster log "stale" [ "stale" ]).Properties
                    @ [ "partition.assignment.strategy", "cooperative-sticky" ]
        }

        let a = Workflow.run (options "a") pipe

        waitUntil log (seconds 30.) "a holds both partitions with writes waiting" (fun () ->
            a.Stats.InFlightMessages >= 40L)

        let b = Workflow.run (options "b") pipe
        waitUntil log (seconds 30.) "b got a partition" (fun () -> b.Stats.AssignedPartitions = 1)
        // a's drain of the revoked partition timed out; its waiting writes now finish, too late.
        gate.SetResult()
        waitUntil log (seconds 30.) "the late completions are refused" (fun () -> a.Stats.Refused >= 1L)

        waitUntil log (seconds 30.) "every message is sunk" (fun () ->
            (Seq.distinct sunk |> Seq.length) >= 40)
        // Committed by the periodic commit while the group is stable (the mock refuses commits
        // during the rebalances the stops cause).
        waitEndOffsetsCommitted cluster log (seconds 30.) "stale" "stale" 2

        stopped log a
        stopped log b

        Expect.equal
            (committed cluster "stale" "stale" 2)
            (endOffsets cluster "stale" 2)
            $"all committed.\nLog:\n{log.Tail}"

        Expect.isGreaterThan (log.Count "the ledger refused a completion") 0 "the refusal is logged"

let private badProperty =
    testCase "an unknown librdkafka property fails Workflow.run with an ArgumentException naming it"
    <| fun () ->
        let log = Log()

        let options = {
            WorkflowOptions.create "bad" "127.0.0.1:1" "bad" [ "t" ] with
                Properties = [ "no.such.property", "1" ]
                Log = log.Add
        }

        Expect.throwsC (fun () -> Workflow.run options Pipe.source<byte[]> |> ignore) (fun e ->
            Expect.isTrue (e :? ArgumentException) $"an ArgumentException, got {e}"
            Expect.stringContains e.Message "no.such.property" "names the property")

let tests =
    testSequenced
    <| testList "Workflow" [
        endToEnd
        gracefulStop
        gaps
        asyncMaps
        slowSink
        stallFlush
        partitionLimit
        queueLimit
        compactionGaps
        boundedStop
        brokerDown
        failingSink
        halt
        testCase
            "two instances with eager assignment share the partitions and one takes over when the other stops"
        <| fun () -> scaleOut None
        testCase
            "two instances with cooperative-sticky assignment share the partitions and one takes over when the other stops"
        <| fun () -> scaleOut (Some "cooperative-sticky")
        staleCompletion
        badProperty
    ]
