// The embedded Kafka cluster: librdkafka's in-process mock cluster (real wire protocol on loopback
// ports) with topic creation and fault injection, for tests, demos and local development.
namespace KFlow.Testing

open System
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka

/// Kafka protocol API keys, for request error injection.
type KafkaApiKey =
    | Produce = 0s
    | Fetch = 1s
    | ListOffsets = 2s
    | Metadata = 3s
    | OffsetCommit = 8s
    | OffsetFetch = 9s
    | FindCoordinator = 10s
    | JoinGroup = 11s
    | Heartbeat = 12s
    | LeaveGroup = 13s
    | SyncGroup = 14s
    | DescribeGroups = 15s
    | ListGroups = 16s
    | ApiVersions = 18s
    | CreateTopics = 19s
    | InitProducerId = 22s
    | AddPartitionsToTxn = 24s
    | AddOffsetsToTxn = 25s
    | EndTxn = 26s
    | TxnOffsetCommit = 28s

/// How to start an embedded cluster. Build one from `EmbeddedKafkaOptions.Default` with `{ … with … }`.
type EmbeddedKafkaOptions = {
    /// Number of brokers, ids 1..Brokers. Default 1.
    Brokers: int
    /// Delay before the first rebalance of a new group. Default zero (Kafka's and the mock's
    /// group.initial.rebalance.delay.ms is 3 s, which every test's first join would pay).
    GroupInitialRebalanceDelay: TimeSpan
    /// librdkafka log level (0-7) of the handle that owns the cluster; its logs go to stderr.
    /// Default 3 (errors only; librdkafka's default is 6).
    LogLevel: int
} with

    /// One broker, no initial rebalance delay, errors-only logging.
    static member Default = {
        Brokers = 1
        GroupInitialRebalanceDelay = TimeSpan.Zero
        LogLevel = 3
    }

    /// A copy with another broker count (C#; F# uses `{ o with Brokers = n }`).
    member this.WithBrokers(brokers: int) = { this with Brokers = brokers }

    /// A copy with another group initial rebalance delay.
    member this.WithGroupInitialRebalanceDelay(delay: TimeSpan) = {
        this with
            GroupInitialRebalanceDelay = delay
    }

    /// A copy with another librdkafka log level (0-7).
    member this.WithLogLevel(level: int) = { this with LogLevel = level }

/// A running embedded Kafka cluster. Dispose it to stop the brokers and free their ports.
/// Every member is thread-safe; calls after disposal raise ObjectDisposedException.
[<Sealed>]
type EmbeddedKafkaCluster internal (rk: nativeint, mcluster: nativeint, options: EmbeddedKafkaOptions) =
    let bootstrap =
        LibRdKafka.rd_kafka_mock_cluster_bootstraps mcluster
        |> Runtime.InteropServices.Marshal.PtrToStringUTF8

    let gate = obj ()
    let mutable disposed = false

    /// Runs a native call unless the cluster is stopped; Dispose waits for calls in progress, so a
    /// call never reaches a destroyed cluster.
    let native (call: unit -> 'T) : 'T =
        lock gate (fun () ->
            if disposed then
                raise (
                    ObjectDisposedException(
                        nameof EmbeddedKafkaCluster,
                        "The embedded Kafka cluster is stopped; start a new one."
                    )
                )

            call ())

    let checkBroker (brokerId: int) =
        if brokerId < 1 || brokerId > options.Brokers then
            raise (
                ArgumentOutOfRangeException(
                    nameof brokerId,
                    brokerId,
                    $"Broker ids run from 1 to {options.Brokers}; start the cluster with more brokers "
                    + "(EmbeddedKafkaOptions.Brokers) to use this one."
                )
            )

    let check (what: string) (err: int) =
        if err <> 0 then
            raise (InvalidOperationException $"{what} failed: {LibRdKafka.errorName err} (error {err}).")

    /// The bootstrap.servers list, e.g. "127.0.0.1:39521,127.0.0.1:40123".
    member _.BootstrapServers = bootstrap

    /// Number of brokers; their ids run from 1 to this number.
    member _.Brokers = options.Brokers

    /// The options the cluster was started with.
    member _.Options = options

    /// Creates a topic. Raises ArgumentException on a bad name, partition count or replication factor.
    member _.CreateTopic(name: string, partitions: int, replicationFactor: int) =
        if String.IsNullOrWhiteSpace name then
            raise (ArgumentException("A topic needs a non-empty name.", nameof name))

        if partitions < 1 then
            raise (
                ArgumentOutOfRangeException(
                    nameof partitions,
                    partitions,
                    "A topic needs at least 1 partition."
                )
            )

        if replicationFactor < 1 || replicationFactor > options.Brokers then
            raise (
                ArgumentOutOfRangeException(
                    nameof replicationFactor,
                    replicationFactor,
                    $"The replication factor must be between 1 and the broker count ({options.Brokers})."
                )
            )

        native (fun () ->
            LibRdKafka.rd_kafka_mock_topic_create (mcluster, name, partitions, replicationFactor))
        |> check $"Creating topic '{name}'"

    /// Creates a topic with replication factor 1.
    member this.CreateTopic(name: string, partitions: int) = this.CreateTopic(name, partitions, 1)

    /// Takes a broker down: its connections close and it refuses requests until BringBrokerUp.
    member _.TakeBrokerDown(brokerId: int) =
        checkBroker brokerId

        native (fun () -> LibRdKafka.rd_kafka_mock_broker_set_down (mcluster, brokerId))
        |> check $"Taking broker {brokerId} down"

    /// Brings a broker taken down by TakeBrokerDown back up.
    member _.BringBrokerUp(brokerId: int) =
        checkBroker brokerId

        native (fun () -> LibRdKafka.rd_kafka_mock_broker_set_up (mcluster, brokerId))
        |> check $"Bringing broker {brokerId} up"

    /// Makes the next requests of an API (on any broker) fail, one error per request, in order.
    /// ErrorCode.NoError entries let a request through. Errors are Kafka protocol codes
    /// (e.g. ErrorCode.NotLeaderForPartition, ErrorCode.RequestTimedOut).
    member _.PushRequestErrors(apiKey: KafkaApiKey, [<ParamArray>] errors: ErrorCode[]) =
        if isNull errors || errors.Length = 0 then
            raise (ArgumentException("Give at least one error to inject.", nameof errors))

        let codes = errors |> Array.map int

        native (fun () ->
            LibRdKafka.rd_kafka_mock_push_request_errors_array (
                mcluster,
                int16 apiKey,
                unativeint codes.Length,
                codes
            ))

    /// Drops the errors still queued for an API by PushRequestErrors.
    member _.ClearRequestErrors(apiKey: KafkaApiKey) =
        native (fun () -> LibRdKafka.rd_kafka_mock_clear_request_errors (mcluster, int16 apiKey))

    /// Delays every response of a broker by rtt (millisecond resolution); TimeSpan.Zero removes it.
    member _.SetRoundTripTime(brokerId: int, rtt: TimeSpan) =
        checkBroker brokerId

        if rtt < TimeSpan.Zero then
            raise (ArgumentOutOfRangeException(nameof rtt, rtt, "A round-trip time cannot be negative."))

        native (fun () ->
            LibRdKafka.rd_kafka_mock_broker_set_rtt (mcluster, brokerId, int rtt.TotalMilliseconds))
        |> check $"Setting the round-trip time of broker {brokerId}"

    /// Sets the delay before the first rebalance of new groups (see EmbeddedKafkaOptions).
    member _.SetGroupInitialRebalanceDelay(delay: TimeSpan) =
        if delay < TimeSpan.Zero then
            raise (ArgumentOutOfRangeException(nameof delay, delay, "A rebalance delay cannot be negative."))

        native (fun () ->
            LibRdKafka.rd_kafka_mock_group_initial_rebalance_delay_ms (mcluster, int delay.TotalMilliseconds))

    /// A new ProducerConfig for this cluster with FastClientSettings.producer.
    member _.ProducerConfig() =
        FastClientSettings.producerConfig bootstrap

    /// A new ConsumerConfig for this cluster and group with FastClientSettings.consumer.
    member _.ConsumerConfig(groupId: string) =
        FastClientSettings.consumerConfig groupId bootstrap

    /// A new AdminClientConfig for this cluster with FastClientSettings.common.
    member _.AdminConfig() =
        FastClientSettings.adminConfig bootstrap

    /// Stops the brokers (clients see closed connections) and frees their ports. Idempotent.
    member _.Dispose() =
        lock gate (fun () ->
            if not disposed then
                disposed <- true
                LibRdKafka.rd_kafka_mock_cluster_destroy mcluster
                LibRdKafka.rd_kafka_destroy rk)

    interface IDisposable with
        member this.Dispose() = this.Dispose()

    interface IAsyncDisposable with
        /// Stops the cluster on the thread pool (destroying it joins librdkafka's threads).
        member this.DisposeAsync() =
            ValueTask(Task.Run(fun () -> this.Dispose()))

/// Starts embedded Kafka clusters: `EmbeddedKafka.start 3` (F#), `EmbeddedKafka.Start(3)` (C#).
[<RequireQualifiedAccess>]
module EmbeddedKafka =

    let private startFailure (detail: string) =
        InvalidOperationException(
            $"The embedded Kafka cluster did not start: {detail} It needs loopback TCP ports "
            + "(127.0.0.1) and librdkafka's mock cluster (librdkafka.redist 2.x)."
        )

    /// Starts a cluster with the given options.
    /// <summary>
    /// 1. Loads librdkafka as Confluent.Kafka does (same copy), with no manual step.
    /// 2. Creates a producer handle that owns the cluster, then the mock cluster on loopback ports.
    /// 3. Applies the group initial rebalance delay.
    /// </summary>
    [<CompiledName("Start")>]
    let startWith (options: EmbeddedKafkaOptions) =
        if options.Brokers < 1 then
            raise (
                ArgumentOutOfRangeException(
                    "options",
                    options.Brokers,
                    "Brokers must be >= 1; set EmbeddedKafkaOptions.Brokers."
                )
            )

        if options.LogLevel < 0 || options.LogLevel > 7 then
            raise (
                ArgumentOutOfRangeException(
                    "options",
                    options.LogLevel,
                    "LogLevel must be 0-7; set EmbeddedKafkaOptions.LogLevel."
                )
            )

        if options.GroupInitialRebalanceDelay < TimeSpan.Zero then
            raise (
                ArgumentOutOfRangeException(
                    "options",
                    options.GroupInitialRebalanceDelay,
                    "GroupInitialRebalanceDelay cannot be negative; set EmbeddedKafkaOptions.GroupInitialRebalanceDelay."
                )
            )

        LibRdKafka.ensureLoaded ()
        let errstr = Array.zeroCreate<byte> 512
        let conf = LibRdKafka.rd_kafka_conf_new ()

        let set name value =
            if
                LibRdKafka.rd_kafka_conf_set (conf, name, value, errstr, unativeint errstr.Length)
                <> 0
            then
                LibRdKafka.rd_kafka_conf_destroy conf
                raise (startFailure $"setting {name}={value}: {LibRdKafka.errorText errstr}.")

        set "log_level" (string options.LogLevel)
        set "client.id" "kflow-embedded-kafka"
        let rk = LibRdKafka.rd_kafka_new (0, conf, errstr, unativeint errstr.Length)

        if rk = IntPtr.Zero then
            LibRdKafka.rd_kafka_conf_destroy conf
            raise (startFailure $"rd_kafka_new: {LibRdKafka.errorText errstr}.")

        let mcluster = LibRdKafka.rd_kafka_mock_cluster_new (rk, options.Brokers)

        if mcluster = IntPtr.Zero then
            LibRdKafka.rd_kafka_destroy rk
            raise (startFailure "rd_kafka_mock_cluster_new returned no cluster (see librdkafka's log above).")

        LibRdKafka.rd_kafka_mock_group_initial_rebalance_delay_ms (
            mcluster,
            int options.GroupInitialRebalanceDelay.TotalMilliseconds
        )

        new EmbeddedKafkaCluster(rk, mcluster, options)

    /// Starts a cluster of `brokers` brokers with the default options otherwise.
    [<CompiledName("Start")>]
    let start (brokers: int) =
        startWith {
            EmbeddedKafkaOptions.Default with
                Brokers = brokers
        }

    /// The librdkafka file this process uses for Confluent.Kafka and the cluster, when it can be
    /// told (Linux); for diagnostics.
    [<CompiledName("LoadedLibraryPath")>]
    let loadedLibraryPath () =
        LibRdKafka.loadedPath () |> Option.toObj
