// Helpers of the runtime tests against the embedded cluster: producing keyed messages, reading a
// group's committed offsets and the end offsets, workflow options for the cluster, waiting, stopping.
module KFlow.Kafka.Tests.Kafka

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow.Kafka
open KFlow.Testing

/// Produces messages number `first` to `first + count - 1` over `keys` keys: message i has key
/// "k{i % keys}" and value "k{i % keys}:{i / keys}", so each key's values count 0, 1, 2, … across
/// calls. Waits for every delivery.
let produceRange (cluster: EmbeddedKafkaCluster) (topic: string) (keys: int) (first: int) (count: int) =
    use producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let mutable failed = 0

    for i in first .. first + count - 1 do
        producer.Produce(
            topic,
            Message<_, _>(Key = $"k{i % keys}", Value = $"k{i % keys}:{i / keys}"),
            fun report ->
                if report.Error.IsError then
                    Interlocked.Increment &failed |> ignore
        )

    producer.Flush(TimeSpan.FromSeconds 60.) |> ignore
    Expect.equal failed 0 "every message is delivered"

/// Produces `count` messages over `keys` keys (see produceRange), from message 0.
let produceKeyed (cluster: EmbeddedKafkaCluster) (topic: string) (keys: int) (count: int) =
    produceRange cluster topic keys 0 count

/// The end (high watermark) offset of every partition of a topic.
let endOffsets = KFlow.Tests.CrashHarness.endOffsets

/// The offsets a group committed for every partition of a topic (-1001 when none).
let committed = KFlow.Tests.CrashHarness.committed

/// The runtime's log lines of one test (printed when the test fails).
type Log = KFlow.Tests.CrashHarness.Log

/// Options for a workflow on the embedded cluster: the fast client settings, ticks every 100 ms,
/// restarts after 100 ms doubling to 1 s, sink retries in place after 20 ms doubling to 100 ms,
/// logs into `log`.
let options (cluster: EmbeddedKafkaCluster) (log: Log) (group: string) (topics: string list) =
    let fast =
        FastClientSettings.consumer
        |> Seq.filter (fun kv -> kv.Key <> "auto.offset.reset")
        |> Seq.map (fun kv -> kv.Key, kv.Value)
        |> List.ofSeq

    {
        WorkflowOptions.create group cluster.BootstrapServers group topics with
            Properties = fast
            TickInterval = TimeSpan.FromMilliseconds 100.
            OnFailure =
                RestartAndReplay {
                    Backoff.defaults with
                        First = TimeSpan.FromMilliseconds 100.
                        Max = TimeSpan.FromSeconds 1.
                }
            SinkRetryBackoff = {
                Backoff.defaults with
                    First = TimeSpan.FromMilliseconds 20.
                    Max = TimeSpan.FromMilliseconds 100.
            }
            Log = log.Add
    }

/// Waits until `condition` holds, checking every 20 ms; fails the test (with the log's tail) after `within`.
let waitUntil = KFlow.Tests.CrashHarness.waitUntil

/// A span of `n` seconds.
let seconds (n: float) = TimeSpan.FromSeconds n

/// A one-broker embedded cluster holding `topic` with `partitions` partitions and `count` messages
/// over `keys` keys (see `produceKeyed`); the caller disposes it.
let clusterWith (topic: string) (partitions: int) (keys: int) (count: int) =
    let cluster = EmbeddedKafka.start 1

    try
        cluster.CreateTopic(topic, partitions)
        produceKeyed cluster topic keys count
        cluster
    with _ ->
        cluster.Dispose()
        reraise ()

/// Stops a workflow; fails the test (with the log's tail) unless the stop ends cleanly within 30 s.
let stopped (log: Log) (handle: WorkflowHandle) =
    if not (handle.StopAsync().Wait(seconds 30.)) then
        failtestf "StopAsync did not finish within 30 s.\nLog:\n%s" log.Tail

    Expect.equal handle.Completion.Status TaskStatus.RanToCompletion $"a clean stop.\nLog:\n{log.Tail}"

/// A pipe reading each message's bytes as a UTF-8 string: the start of most test pipes.
let decoded () =
    KFlow.Pipe.source<byte[]> |> KFlow.Pipe.map Text.Encoding.UTF8.GetString

/// Waits until `group` has committed the end offset of each of the `partitions` partitions of `topic`
/// (read once, now); fails the test (with the log's tail) after `within`.
let waitEndOffsetsCommitted
    (cluster: EmbeddedKafkaCluster)
    (log: Log)
    (within: TimeSpan)
    (group: string)
    (topic: string)
    (partitions: int)
    =
    let ends = endOffsets cluster topic partitions

    waitUntil log within $"the end offsets of {topic} are committed" (fun () ->
        committed cluster group topic partitions = ends)

/// Expects the group to have committed no offset of the one-partition `topic` past `offset` (a
/// failing or buffered message there must not be committed past).
let expectNotCommittedPast (cluster: EmbeddedKafkaCluster) (group: string) (topic: string) (offset: int64) =
    Expect.isTrue
        (committed cluster group topic 1 |> List.forall (fun (_, o) -> o <= offset))
        $"nothing of {topic} committed past offset {offset}"

/// How many partitions a topic has.
let partitionCount (cluster: EmbeddedKafkaCluster) (topic: string) =
    use admin = AdminClientBuilder(cluster.AdminConfig()).Build()

    admin.GetMetadata(topic, seconds 10.).Topics
    |> Seq.sumBy (fun t -> t.Partitions.Count)

/// Expects the group of `options` to have committed the end offset of every partition of its topics.
let expectEndOffsetsCommitted (cluster: EmbeddedKafkaCluster) (options: WorkflowOptions) =
    for topic in options.Topics do
        let partitions = partitionCount cluster topic

        Expect.equal
            (committed cluster options.GroupId topic partitions)
            (endOffsets cluster topic partitions)
            $"the end offsets of {topic} are committed"

/// <summary>The run of most workflow tests, once: runs <paramref name="pipe"/> under
/// <paramref name="options"/> until <paramref name="sunk"/> holds <paramref name="count"/> values
/// (failing after <paramref name="within"/>, with the log's tail), stops it cleanly, and expects the
/// end offsets to be committed. Returns the stopped handle (its Stats are final).</summary>
let runUntilSunk
    (cluster: EmbeddedKafkaCluster)
    (log: Log)
    (within: TimeSpan)
    (sunk: ConcurrentQueue<'v>)
    (count: int)
    (options: WorkflowOptions)
    (pipe: KFlow.Pipe<byte[], 'o>)
    =
    let handle = Workflow.run options pipe
    waitUntil log within $"{count} values are sunk" (fun () -> sunk.Count >= count)
    stopped log handle
    expectEndOffsetsCommitted cluster options
    handle
