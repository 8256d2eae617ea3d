// The runtime benchmarks' shared input: 1,000,000 keyed messages of ~200 bytes over 8 partitions,
// produced once on the embedded cluster, the work every contender does per message, and a meter.
module KFlow.Bench.RuntimeInput

open System
open System.Buffers.Text
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open KFlow.Testing

/// The input every runtime benchmark reads.
type Input = {
    /// The cluster's bootstrap.servers list.
    BootstrapServers: string
    /// The topic holding the messages.
    Topic: string
    /// Partitions of the topic. Default 8.
    Partitions: int
    /// Messages in the topic. Default 1,000,000 (`--messages N`).
    Messages: int
    /// The end offset (high watermark) of each partition, by partition number.
    EndOffsets: int64[]
}

/// How every contender's consumer fetches. Both are given to every contender alike (raw loop,
/// KFlow, Streamiz) on top of the embedded cluster's fast settings (`FastClientSettings.consumer`).
type Fetching =
    /// fetch.queue.backoff.ms 10 (`unthrottledBackoffMs`): the fair run, whose figures are the
    /// benchmark's main JSON keys.
    | Unthrottled
    /// fetch.queue.backoff.ms 1000, librdkafka's default, stated so that KFlow's own default
    /// (WorkflowOptions.FetchQueueBackoff) does not apply either: the `_client_defaults` keys.
    | ClientDefaults

/// fetch.queue.backoff.ms of the fair run. 10 ms (librdkafka default 1000 ms). With the default,
/// once a partition's local queue passes queued.min.messages (100,000 messages in all here) the next
/// fetch waits a full second: the raw loop read 100,000 messages in ~150 ms, then stalled ~850 ms,
/// over and over (118,000 msgs/s on 500,000 messages; 593,000 with 10 ms).
[<Literal>]
let UnthrottledBackoffMs = 10

/// The consumer settings of every contender for `fetching`: FastClientSettings.consumer without
/// auto.offset.reset (each contender sets it its own way), plus fetch.queue.backoff.ms.
let consumerSettings (fetching: Fetching) : (string * string) list =
    let backoff =
        match fetching with
        | Unthrottled -> UnthrottledBackoffMs
        | ClientDefaults -> 1000

    [
        for kv in FastClientSettings.consumer do
            if kv.Key <> "auto.offset.reset" then
                kv.Key, kv.Value
        "fetch.queue.backoff.ms", string backoff
    ]

/// The suffix of the JSON keys of a run with `fetching`: "" for the fair run.
let suffix (fetching: Fetching) =
    match fetching with
    | Unthrottled -> ""
    | ClientDefaults -> "_client_defaults"

/// Distinct message keys. 1,000, the demux benchmark's key count.
[<Literal>]
let Keys = 1000

/// The key of message i: "k0000" .. "k0999".
let key (i: int) = "k" + (i % Keys).ToString "D4"

let private filler = String('x', 189)

/// The value of message i: its number in 10 digits, '|', and 189 filler bytes (200 bytes).
let value (i: int) = i.ToString "D10" + "|" + filler

/// The map every contender runs: the message number read back from the value's first 10 bytes.
let map (v: byte[]) =
    let mutable n = 0L
    let mutable consumed = 0

    if Utf8Parser.TryParse(ReadOnlySpan<byte>(v, 0, 10), &n, &consumed, 'D') then
        n
    else
        -1L

/// The filter every contender runs; it keeps every message (so every message reaches the end).
let keep (n: int64) = n >= 0L

/// The producer settings of the input: the embedded cluster's fast settings, a deep local queue,
/// and lz4 compression. librdkafka's mock cluster keeps at most 5 MiB per partition (hard-coded in
/// rdkafka_mock.c, older batches are dropped), 40 MiB over 8 partitions: 1,000,000 messages of
/// ~215 bytes (215 MB) fit only compressed. Every contender pays the same decompression.
let private producerConfig (cluster: EmbeddedKafkaCluster) =
    let c = cluster.ProducerConfig()
    c.QueueBufferingMaxMessages <- 500_000
    // The mock broker answers a Fetch with one produced batch per partition, so the batching here
    // shapes every contender's fetches (docs/benchmarks.md). KFLOW_BENCH_LINGER_MS and
    // KFLOW_BENCH_BATCH_MESSAGES override linger.ms and batch.num.messages for such experiments.
    c.LingerMs <-
        match Environment.GetEnvironmentVariable "KFLOW_BENCH_LINGER_MS" with
        | null -> 5.0
        | v -> float v

    match Environment.GetEnvironmentVariable "KFLOW_BENCH_BATCH_MESSAGES" with
    | null -> ()
    | v ->
        c.BatchNumMessages <- int v
        c.BatchSize <- 64 * 1024 * 1024
        c.MessageMaxBytes <- 64 * 1024 * 1024

    c.CompressionType <- CompressionType.Lz4
    c

/// Produces `messages` messages to a new topic of `partitions` partitions; returns the input and
/// the produce rate in messages/s (until every delivery report is in).
let produce (cluster: EmbeddedKafkaCluster) (topic: string) (partitions: int) (messages: int) =
    cluster.CreateTopic(topic, partitions)
    use producer = ProducerBuilder<string, string>(producerConfig cluster).Build()
    let mutable failed = 0
    let mutable firstError = ""

    let report =
        Action<DeliveryReport<string, string>>(fun r ->
            if r.Error.IsError && Interlocked.Increment &failed = 1 then
                firstError <- r.Error.Reason)

    let watch = Stopwatch.StartNew()

    for i in 0 .. messages - 1 do
        let message = Message<string, string>(Key = key i, Value = value i)
        let mutable sent = false

        while not sent do
            try
                producer.Produce(topic, message, report)
                sent <- true
            with :? ProduceException<string, string> as e when e.Error.Code = ErrorCode.Local_QueueFull ->
                producer.Poll(TimeSpan.FromMilliseconds 10.0) |> ignore

    while producer.Flush(TimeSpan.FromSeconds 10.0) > 0 do
        ()

    let seconds = watch.Elapsed.TotalSeconds

    if failed > 0 then
        failwithf "Producing the benchmark input failed for %d messages: %s" failed firstError

    use probe =
        ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig "kflow-bench-probe").Build()

    let ends =
        Array.init partitions (fun p ->
            probe
                .QueryWatermarkOffsets(TopicPartition(topic, Partition p), TimeSpan.FromSeconds 10.0)
                .High.Value)

    let input = {
        BootstrapServers = cluster.BootstrapServers
        Topic = topic
        Partitions = partitions
        Messages = messages
        EndOffsets = ends
    }

    input, float messages / seconds

/// Counts messages reaching the end of a pipe and times the first to the last; thread-safe.
/// Completed finishes when the expected count is reached.
[<Sealed>]
type Meter(expected: int) =
    let mutable count = 0
    let mutable first = 0L
    let mutable last = 0L
    let started = Stopwatch.GetTimestamp()

    let finished =
        TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

    /// Marks the start of the timing (the first message read) if not marked yet. A pipe whose
    /// first output comes late (an aggregate) calls it from its first stage.
    member _.Start() =
        if Volatile.Read &first = 0L then
            Interlocked.CompareExchange(&first, Stopwatch.GetTimestamp(), 0L) |> ignore

    /// Counts n messages reaching the end.
    member _.Hit(n: int) =
        let now = Stopwatch.GetTimestamp()
        Interlocked.CompareExchange(&first, now, 0L) |> ignore
        let total = Interlocked.Add(&count, n)

        if total >= expected && total - n < expected then
            Volatile.Write(&last, now)
            finished.TrySetResult() |> ignore

    /// Counts one message reaching the end.
    member this.Hit() = this.Hit 1

    /// Messages counted so far.
    member _.Count = Volatile.Read &count

    /// Completes when `expected` messages were counted.
    member _.Completed: Task = finished.Task

    /// Messages/s from the first message counted (or Start) to the one that reached `expected`.
    member _.MessagesPerSecond =
        let elapsed = Stopwatch.GetElapsedTime(Volatile.Read &first, Volatile.Read &last)
        float expected / elapsed.TotalSeconds

    /// Seconds from the meter's creation to the message that reached `expected` (start-up included).
    member _.WallSeconds =
        Stopwatch.GetElapsedTime(started, Volatile.Read &last).TotalSeconds

    /// Waits for Completed, failing with a sentence after `timeout`.
    member this.Wait(timeout: TimeSpan, what: string) =
        if not (this.Completed.Wait timeout) then
            failwithf "%s: only %d of %d messages arrived within %O." what this.Count expected timeout
