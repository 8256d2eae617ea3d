// A snapshot of a running workflow's counters and of its partitions, as plain C# records.
using System.Collections.Generic;

namespace KFlow.Hosting;

/// <summary>What a running workflow has done so far (totals since it started, over restarts).</summary>
/// <param name="Consumed">Messages handed to the pipeline (a message read again after a restart counts again).</param>
/// <param name="InFlight">Messages handed to the pipeline whose processing has not finished.</param>
/// <param name="Written">Values written by the sink; a batch (any ICollection) counts its items, so
/// for a PostgreSQL sink of batches this is the rows upserted.</param>
/// <param name="Pauses">Times intake paused on the in-flight limits (backpressure).</param>
/// <param name="Failures">Failures that stopped the consumer (a stage threw, a write failed).</param>
/// <param name="Restarts">Restarts from the committed offsets after a failure.</param>
/// <param name="AssignedPartitions">Partitions assigned to this instance now.</param>
public sealed record WorkflowProgress(
    long Consumed,
    long InFlight,
    long Written,
    long Pauses,
    long Failures,
    long Restarts,
    int AssignedPartitions)
{
    /// <summary>Messages whose processing finished (sunk, filtered out, dead-lettered).</summary>
    public long Completed { get; init; }

    /// <summary>Retries in place of sink writes and async calls.</summary>
    public long Retries { get; init; }

    /// <summary>Messages dead-lettered (their dead-letter write acknowledged).</summary>
    public long DeadLettered { get; init; }

    /// <summary>Assigned partitions paused now (backpressure or stopping).</summary>
    public int PausedPartitions { get; init; }

    /// <summary>The assigned partitions as the consumer last saw them (refreshed every 250 ms).</summary>
    public IReadOnlyList<PartitionProgress> Partitions { get; init; } = [];
}

/// <summary>One assigned partition of a running workflow.</summary>
/// <param name="Topic">The topic.</param>
/// <param name="Partition">The partition.</param>
/// <param name="Committed">The offset stored for commit (every message below it is finished;
/// committed within KafkaSettings.CommitInterval, at once on revoke and stop); -1 before the first.</param>
/// <param name="Position">The consumer's position (next offset to fetch); -1 when unknown.</param>
/// <param name="HighWatermark">The partition's end offset from the consumer's last fetch; -1 when unknown.</param>
/// <param name="Lag">HighWatermark − the safe commit point (the first unfinished offset, which the next
/// commit stores); -1 when unknown.</param>
/// <param name="OpenOffsets">Messages of the partition in flight (handed to the pipeline, not finished).</param>
/// <param name="Paused">Whether the partition is paused now.</param>
public sealed record PartitionProgress(
    string Topic,
    int Partition,
    long Committed,
    long Position,
    long HighWatermark,
    long Lag,
    long OpenOffsets,
    bool Paused);
