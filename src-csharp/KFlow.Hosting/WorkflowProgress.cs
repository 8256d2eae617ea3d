// A snapshot of a running workflow's counters, as a plain C# record.
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
    int AssignedPartitions);
