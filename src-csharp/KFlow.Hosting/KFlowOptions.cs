// The settings every workflow of a host shares, bound from configuration section "KFlow"
// (appsettings.json, environment variables KFlow__Kafka__BootstrapServers, command line).
using System;
using System.Collections.Generic;

namespace KFlow.Hosting;

/// <summary>KFlow's settings: configuration section <see cref="SectionName"/>.</summary>
public sealed class KFlowOptions
{
    /// <summary>The configuration section the settings bind from: "KFlow".</summary>
    public const string SectionName = "KFlow";

    /// <summary>The Kafka cluster and the runtime's limits.</summary>
    public KafkaSettings Kafka { get; set; } = new();

    /// <summary>The PostgreSQL database of <c>ToPostgres</c> sinks.</summary>
    public PostgresSettings Postgres { get; set; } = new();
}

/// <summary>Kafka settings (section KFlow:Kafka).</summary>
public sealed class KafkaSettings
{
    /// <summary>The bootstrap.servers list, e.g. "host1:9092,host2:9092". Required, no default
    /// (env KFlow__Kafka__BootstrapServers).</summary>
    public string? BootstrapServers { get; set; }

    /// <summary>Other librdkafka consumer properties (TLS, SASL, session.timeout.ms, …). Default none.
    /// group.id, bootstrap.servers, enable.auto.commit, enable.auto.offset.store,
    /// auto.commit.interval.ms and auto.offset.reset are owned by KFlow and refused.</summary>
    public Dictionary<string, string> Properties { get; set; } = new();

    /// <summary>librdkafka producer properties of <c>ToKafka</c> sinks (TLS, SASL, linger.ms, …).
    /// Default none; enable.idempotence is true unless set here.</summary>
    public Dictionary<string, string> ProducerProperties { get; set; } = new();

    /// <summary>How often the safe offsets are committed. Default 5 s (librdkafka's default too);
    /// revokes and stops also commit.</summary>
    public TimeSpan CommitInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Messages in flight per workflow before intake stops: it holds (stops reading), and pauses
    /// every partition if the limit still holds after 500 ms. Default 50,000.</summary>
    public int MaxInFlightMessages { get; set; } = 50_000;

    /// <summary>Unfinished messages per partition before that partition pauses. Default 20,000.</summary>
    public int MaxOpenOffsetsPerPartition { get; set; } = 20_000;

    /// <summary>Consumed messages waiting for their partition loops (not yet in the pipe, all
    /// partitions together) before intake holds; it resumes at half of it, and pauses every partition if
    /// the limit still holds after 500 ms. The loops' queues hold .NET objects the garbage collector
    /// walks, while what librdkafka prefetched waits in native memory. Default 8,192.</summary>
    public int MaxQueuedMessages { get; set; } = 8_192;

    /// <summary>Async calls (<c>MapAsync</c> steps of every partition and key) running at once in a
    /// workflow; each further call waits for one to end. Default 1,024.</summary>
    public int MaxConcurrentCalls { get; set; } = 1024;

    /// <summary>Sink writes running at once in a workflow; each further write waits for one to end.
    /// Default int.MaxValue (no cap beyond MaxInFlightMessages).</summary>
    public int MaxConcurrentWrites { get; set; } = int.MaxValue;

    /// <summary>How long a stop or revoke waits for in-flight writes; a whole stop (drain, commit,
    /// leaving the group) takes at most twice this. Default 10 s.</summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Stop the workflow (and the host) on a failure instead of restarting it from the
    /// committed offsets with backoff (1 s doubling to 30 s). Default false.</summary>
    public bool HaltOnFailure { get; set; }
}

/// <summary>PostgreSQL settings (section KFlow:Postgres).</summary>
public sealed class PostgresSettings
{
    /// <summary>The Npgsql connection string of <c>ToPostgres</c> sinks that set none themselves.
    /// Default null (env KFlow__Postgres__ConnectionString).</summary>
    public string? ConnectionString { get; set; }
}
