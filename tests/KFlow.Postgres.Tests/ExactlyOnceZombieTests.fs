// The exactly-once mode's fence end to end: instance A's sink writes are held (a paused process) while
// its partitions move to a rebalance with instance B; both process every message again, commit and prune,
// then A's held writes go on with A's old claims. They must be fenced; without the fence they apply twice.
// Under cooperative-sticky assignment A keeps some partitions: only the writes of those it lost are fenced.
module KFlow.Postgres.Tests.ExactlyOnceZombieTests

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Postgres
open KFlow.Tests.CrashHarness
open KFlow.Testing
open KFlow.Postgres.Tests.TestDatabase

let private seconds (n: float) = TimeSpan.FromSeconds n

let private topic, partitions, messages, keys = "zombie", 4, 200, 20

/// Produces `messages` messages over `keys` keys; waits for every delivery.
let private produce (cluster: EmbeddedKafkaCluster) =
    use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let mutable failed = 0

    for i in 0 .. messages - 1 do
        producer.Produce(
            topic,
            Confluent.Kafka.Message<_, _>(Key = $"k{i % keys}", Value = string i),
            fun report ->
                if report.Error.IsError then
                    Interlocked.Increment &failed |> ignore
        )

    producer.Flush(seconds 60.) |> ignore
    Expect.equal failed 0 "every message is delivered"

/// Writes of instance A made while `Holding` is set wait for `Release` once they start; their outcomes
/// are kept with the partition each wrote.
type private Hold() =
    let gate = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    let outcomes = ConcurrentQueue<int * exn option>()
    let mutable held = 0

    /// Whether new writes are held.
    member val Holding = true with get, set
    /// How many writes are held (or were).
    member _.Held = Volatile.Read &held
    /// The outcomes of the held writes that ended, with their partition: None when written.
    member _.Outcomes = List.ofSeq outcomes
    /// Lets the held writes go on.
    member _.Release() = gate.TrySetResult() |> ignore

    /// The exactly-once write of `writer`, held when made while Holding: its claims are taken when it
    /// is made (UpsertWriter.ClaimedWrite), as the runtime makes it, before the hold.
    member hold.Write (writer: UpsertWriter<obj[]>) (positions: Position list) : obj[] list -> Task =
        let write = writer.ClaimedWrite positions
        // A write's batch comes from one partition's substream.
        let partition = (List.head positions).TopicPartition.Partition

        if not hold.Holding then
            write
        else
            fun batch -> task {
                Interlocked.Increment &held |> ignore
                do! gate.Task

                try
                    do! write batch
                    outcomes.Enqueue(partition, None)
                with error ->
                    outcomes.Enqueue(partition, Some error)
                    raise error
            }

/// map (row of topic, partition, offset, instance) → demux by key → aggregate of 10 → exactly-once sink.
let private pipe
    (instance: string)
    (writer: UpsertWriter<obj[]>)
    (write: Position list -> obj[] list -> Task)
    =
    Pipe.source<byte[]>
    |> Pipe.mapEnvelope (fun e -> [|
        box e.Position.TopicPartition.Topic
        box e.Position.TopicPartition.Partition
        box e.Position.Offset
        box instance
    |])
    |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate (Buffer.count 10))
    |> Pipe.sinkExactlyOnce "events" writer.AppliedOffsets write

/// (partition, source offset) → rows in the table.
let private rowsPerMessage (table: string) =
    query $"SELECT partition, src_offset, count(*) FROM {table} GROUP BY partition, src_offset"
    |> List.map (fun r -> (unbox<int> r[0], unbox<int64> r[1]), unbox<int64> r[2])
    |> Map.ofList

/// The partitions a workflow has assigned now.
let private assigned (handle: WorkflowHandle) =
    handle.Stats.Partitions |> Seq.map _.Partition |> Set.ofSeq

/// What a zombie run left: the rows per message before and after A's held writes went on, their
/// outcomes (None: written) with the partition each wrote, A's log, failures and whether it ran, and the
/// partitions A kept through the rebalance (none under eager assignment).
[<NoEquality; NoComparison>]
type private Zombie = {
    Before: Map<int * int64, int64>
    Rows: Map<int * int64, int64>
    Outcomes: (int * exn option) list
    Log: Log
    AFailures: int64
    ARunning: bool
    Kept: Set<int>
}

/// Runs the scenario; `fence` false switches A's fence check off (the control); `cooperative` uses the
/// cooperative-sticky assignor for both instances (eager otherwise).
let private zombie (fence: bool) (cooperative: bool) =
    use cluster = EmbeddedKafka.start 1
    cluster.CreateTopic(topic, partitions)
    produce cluster
    let group = "zombie-" + Guid.NewGuid().ToString("N").Substring(0, 8)
    let table = freshTable ()
    let offsets = freshTable ()

    execute
        $"CREATE TABLE {table} (topic text NOT NULL, partition int NOT NULL, src_offset bigint NOT NULL, instance text)"

    let newWriter () =
        writerFor {
            configFor table [ "topic"; "partition"; "src_offset"; "instance" ] [] with
                ExactlyOnce =
                    Some {
                        GroupId = group
                        OffsetsTable = offsets
                    }
        }

    // One writer per instance, as one per process: writers sharing one object share its claims.
    use writerA = newWriter ()
    use writerB = newWriter ()
    writerA.CheckFence <- fence
    let log = Log()

    let options (name: string) = {
        WorkflowOptions.create name cluster.BootstrapServers group [ topic ] with
            Properties =
                (FastClientSettings.consumer
                 |> Seq.filter (fun kv -> kv.Key <> "auto.offset.reset")
                 |> Seq.map (fun kv -> kv.Key, kv.Value)
                 |> List.ofSeq)
                @ (if cooperative then
                       [ "partition.assignment.strategy", "cooperative-sticky" ]
                   else
                       [])
            TickInterval = TimeSpan.FromMilliseconds 100.
            DrainTimeout = seconds 1.
            CommitInterval = TimeSpan.FromMilliseconds 200.
            Log = fun line -> log.Add $"{name}: {line}"
    }

    let hold = Hold()
    let a = Workflow.run (options "A") (pipe "A" writerA (hold.Write writerA))

    // A holds the writes the runtime started (one per partition here); the other batches wait behind
    // them and are dropped with the partitions' state at the revoke.
    waitUntil log (seconds 60.) "A consumed every message and holds a write of every partition" (fun () ->
        a.Stats.Consumed = int64 messages && hold.Held >= partitions)

    hold.Holding <- false
    let b = Workflow.run (options "B") (pipe "B" writerB writerB.ClaimedWrite)
    let all = Set.ofList [ 0 .. partitions - 1 ]

    // Under cooperative-sticky assignment A keeps the partitions it still has once both instances share
    // them all; under eager assignment every partition was revoked (and its claims taken again).
    let kept =
        if cooperative then
            waitUntil log (seconds 60.) "A and B share the partitions" (fun () ->
                let a, b = assigned a, assigned b

                not a.IsEmpty
                && not b.IsEmpty
                && Set.union a b = all
                && (Set.intersect a b).IsEmpty)

            assigned a
        else
            Set.empty

    let moved = all - kept
    let ends = endOffsets cluster topic partitions |> Map.ofList

    let messagesIn (ps: Set<int>) = ps |> Seq.sumBy (fun p -> int ends[p])

    let rowsOf (ps: Set<int>) (rows: Map<int * int64, int64>) =
        rows |> Map.filter (fun (p, _) _ -> ps.Contains p)

    // Kafka's committed offsets are not waited for: a partition that resumed past applied offsets up
    // to its end delivers nothing, so its committed offset stays behind until new messages arrive.
    waitUntil log (seconds 90.) "A and B applied every message of the moved partitions again" (fun () ->
        (rowsPerMessage table |> rowsOf moved).Count = messagesIn moved)

    // What the runtime prunes once Kafka committed past them, now: the applied offsets that could
    // still show A's held batches as applied already are gone, as in a long-running service.
    writerB.AppliedOffsets.Prune [ for p in moved -> TopicPartition.create topic p, ends[p] ]
    |> _.Wait()

    let before = rowsPerMessage table |> rowsOf moved
    hold.Release()

    waitUntil log (seconds 30.) "every held write of A ended" (fun () -> hold.Outcomes.Length = hold.Held)
    waitUntil log (seconds 60.) "every message has a row" (fun () -> (rowsPerMessage table).Count = messages)

    let result = {
        Before = before
        Rows = rowsPerMessage table
        Outcomes = hold.Outcomes
        Log = log
        AFailures = a.Stats.Failures
        ARunning = not a.Completion.IsCompleted
        Kept = kept
    }

    Expect.isTrue (a.StopAsync().Wait(seconds 30.)) "A stops"
    Expect.isTrue (b.StopAsync().Wait(seconds 30.)) "B stops"
    result

/// Every message has exactly one row (`count` messages in all).
let private expectEachOnceOf (count: int) (rows: Map<int * int64, int64>) (what: string) =
    Expect.equal rows.Count count $"{what}: every message has a row"

    Expect.isEmpty
        (rows |> Map.filter (fun _ n -> n > 1L) |> Map.toList |> List.truncate 10)
        $"{what}: no message has two rows"

/// The fence's checks: each message applied once; A's held writes of the partitions it lost fenced,
/// dropped and not counted as failures; those of the partitions it kept written.
let private expectFenced (z: Zombie) =
    expectEachOnceOf z.Before.Count z.Before "before the release (the moved partitions)"
    expectEachOnceOf messages z.Rows $"after the release.\nLog:\n{z.Log.Tail}"

    let fenced, written =
        z.Outcomes |> List.partition (fun (p, _) -> not (z.Kept.Contains p))

    Expect.all
        fenced
        (fun (_, o) -> o |> Option.exists AppliedOffsets.isFenced)
        $"every held write of a partition A lost was fenced: %A{fenced |> List.map (fun (p, o) -> p, o |> Option.map _.Message)}"

    Expect.all
        written
        (fun (_, o) -> o.IsNone)
        $"every held write of a partition A kept was written: %A{written |> List.map (fun (p, o) -> p, o |> Option.map _.Message)}"

    Expect.isNonEmpty fenced "some held writes were of partitions A lost"

    Expect.equal
        (z.Log.Count "a write of an earlier assignment was fenced")
        fenced.Length
        "A dropped each fenced write of its earlier assignment"

    Expect.equal z.AFailures 0L "A did not fail: a fenced write of a revoked partition is not a failure"
    Expect.isTrue z.ARunning "A was still running"

let tests =
    testSequenced
    <| testList "Exactly-once zombie" [
        testCase "a zombie's held writes are fenced after a rebalance, and every message stays applied once"
        <| fun () -> zombie true false |> expectFenced

        testCase
            "under cooperative-sticky assignment only the held writes of the partitions the zombie lost are fenced, and every message stays applied once"
        <| fun () ->
            let z = zombie true true
            Expect.isNonEmpty z.Kept "A kept some partitions through the cooperative rebalance"
            expectFenced z

            Expect.exists
                z.Outcomes
                (fun (p, _) -> z.Kept.Contains p)
                "some held writes were of partitions A kept"

        testCase "without the fence (control) the zombie's held writes apply their messages a second time"
        <| fun () ->
            let z = zombie false false
            expectEachOnceOf messages z.Before "before the release"
            Expect.all z.Outcomes (fun (_, o) -> o.IsNone) "every held write was written"

            Expect.equal
                (z.Rows |> Map.filter (fun _ n -> n > 1L) |> Map.count)
                (10 * z.Outcomes.Length)
                "each message of the held batches (10 each) applied twice: what the fence prevents"
    ]
