// Confluent.Kafka client settings that make tests against the embedded cluster fast: quick group
// joins and rebalances, quick reconnects after a broker comes back. Measured in docs/embedded-kafka.md.
[<RequireQualifiedAccess>]
module KFlow.Testing.FastClientSettings

open System.Collections.Generic
open Confluent.Kafka

/// Settings for every client kind.
/// * reconnect.backoff.max.ms 500 (librdkafka default 10000): reconnects soon after a broker is up.
/// * retry.backoff.max.ms 500 (default 1000).
/// * topic.metadata.refresh.interval.ms 1000 (default 300000): new leaders and partitions are seen
///   quickly after fault injection.
[<CompiledName("Common")>]
let common: IReadOnlyDictionary<string, string> =
    dict [
        "reconnect.backoff.ms", "20"
        "reconnect.backoff.max.ms", "500"
        "retry.backoff.ms", "20"
        "retry.backoff.max.ms", "500"
        "topic.metadata.refresh.interval.ms", "1000"
        "socket.connection.setup.timeout.ms", "5000"
    ]
    |> Dictionary
    :> _

/// Consumer settings on top of `common`.
/// * session.timeout.ms 2000 (default 45000): the mock cluster holds every rebalance (a member
///   joining or leaving) for about the session timeout, so this takes rebalances from ~44 s to
///   ~1-2 s, and evicts a member that died without leaving after 2 s. The mock accepts it; a real
///   broker's group.min.session.timeout.ms (6000) would refuse it.
/// * heartbeat.interval.ms 200 (default 3000): a tenth of the session timeout.
/// * fetch.wait.max.ms 50 (default 500) and fetch.error.backoff.ms 50 (default 500).
/// * auto.offset.reset earliest (default latest): a new group reads what the test produced.
/// * partition.assignment.strategy cooperative-sticky is NOT set: callers choose the protocol.
[<CompiledName("Consumer")>]
let consumer: IReadOnlyDictionary<string, string> =
    let d = Dictionary(common)

    for k, v in
        [
            "session.timeout.ms", "2000"
            "heartbeat.interval.ms", "200"
            "fetch.wait.max.ms", "50"
            "fetch.error.backoff.ms", "50"
            "auto.offset.reset", "earliest"
        ] do
        d[k] <- v

    d :> _

/// Producer settings on top of `common`.
/// * linger.ms 5 (librdkafka default 5), stated so tests don't depend on the default.
[<CompiledName("Producer")>]
let producer: IReadOnlyDictionary<string, string> =
    let d = Dictionary(common)
    d["linger.ms"] <- "5"
    d :> _

let private fill (config: ClientConfig) (settings: IReadOnlyDictionary<string, string>) =
    for kv in settings do
        config.Set(kv.Key, kv.Value)

/// A new ProducerConfig for bootstrapServers with the fast `producer` settings.
[<CompiledName("ProducerConfig")>]
let producerConfig (bootstrapServers: string) =
    let c = ProducerConfig(BootstrapServers = bootstrapServers)
    fill c producer
    c

/// A new ConsumerConfig for bootstrapServers and groupId with the fast `consumer` settings
/// (auto-commit stays on, as in librdkafka; set EnableAutoCommit to false for manual commits).
[<CompiledName("ConsumerConfig")>]
let consumerConfig (groupId: string) (bootstrapServers: string) =
    let c = ConsumerConfig(BootstrapServers = bootstrapServers, GroupId = groupId)
    fill c consumer
    c

/// A new AdminClientConfig for bootstrapServers with the fast `common` settings.
[<CompiledName("AdminConfig")>]
let adminConfig (bootstrapServers: string) =
    let c = AdminClientConfig(BootstrapServers = bootstrapServers)
    fill c common
    c
