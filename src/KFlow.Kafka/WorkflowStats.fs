// What a running workflow measures about itself: counters updated by the consumer thread and the
// partition loops, read as a snapshot. Metrics export (issue 7) can build on these.
namespace KFlow.Kafka

open System.Threading

/// A snapshot of a workflow's counters; totals run over every incarnation since Workflow.run.
type WorkflowStats = {
    /// Messages handed to the pipe (a message read again after a restart or rebalance counts again).
    Consumed: int64
    /// Messages in flight now (handed to the pipe, offset not finished).
    InFlightMessages: int64
    /// Key + value bytes in flight now.
    InFlightBytes: int64
    /// The most messages ever in flight at once.
    PeakInFlightMessages: int64
    /// The most bytes ever in flight at once.
    PeakInFlightBytes: int64
    /// Times the workflow-wide limits paused every partition.
    Pauses: int64
    /// Times the workflow-wide pause was lifted.
    Resumes: int64
    /// Times one partition paused on MaxOpenOffsetsPerPartition.
    PartitionPauses: int64
    /// Times a stalled intake made the pipes flush their buffers (Backpressure.FlushWhenStalled).
    StallFlushes: int64
    /// Completions the ledger refused (they came from an assignment that was revoked meanwhile).
    Refused: int64
    /// Failures (stage, sink, async call, consumer) that stopped an incarnation.
    Failures: int64
    /// Incarnations started after a failure.
    Restarts: int64
    /// Synchronous commits done (revoke, stop, failure).
    SyncCommits: int64
    /// Partitions assigned now.
    AssignedPartitions: int
}

/// The live counters behind WorkflowStats (thread-safe).
type internal Counters() =
    let mutable consumed = 0L
    let mutable inFlightMessages = 0L
    let mutable inFlightBytes = 0L
    let mutable peakMessages = 0L
    let mutable peakBytes = 0L
    let mutable pauses = 0L
    let mutable resumes = 0L
    let mutable partitionPauses = 0L
    let mutable refused = 0L
    let mutable stallFlushes = 0L
    let mutable failures = 0L
    let mutable restarts = 0L
    let mutable syncCommits = 0L
    let mutable assigned = 0

    member _.InFlight = {
        Messages = Volatile.Read &inFlightMessages
        Bytes = Volatile.Read &inFlightBytes
    }

    /// A message handed to the pipe (consumer thread only, so the peaks need no lock).
    member _.Routed(size: int64) =
        Interlocked.Increment &consumed |> ignore
        let m = Interlocked.Increment &inFlightMessages
        let b = Interlocked.Add(&inFlightBytes, size)

        if m > peakMessages then
            peakMessages <- m

        if b > peakBytes then
            peakBytes <- b

    /// Messages finished (or dropped with their partition): negative deltas.
    member _.Finished(messages: int64, bytes: int64) =
        if messages <> 0L then
            Interlocked.Add(&inFlightMessages, -messages) |> ignore

        if bytes <> 0L then
            Interlocked.Add(&inFlightBytes, -bytes) |> ignore

    /// A new incarnation starts with nothing in flight.
    member _.ResetInFlight() =
        Volatile.Write(&inFlightMessages, 0L)
        Volatile.Write(&inFlightBytes, 0L)

    member _.Paused() = Interlocked.Increment &pauses |> ignore

    member _.Resumed() =
        Interlocked.Increment &resumes |> ignore

    member _.PartitionPaused() =
        Interlocked.Increment &partitionPauses |> ignore

    member _.Refused() =
        Interlocked.Increment &refused |> ignore

    member _.StallFlushed() =
        Interlocked.Increment &stallFlushes |> ignore

    member _.Failed() =
        Interlocked.Increment &failures |> ignore

    member _.Restarted() =
        Interlocked.Increment &restarts |> ignore

    member _.Committed() =
        Interlocked.Increment &syncCommits |> ignore

    member _.SetAssigned(n: int) = Volatile.Write(&assigned, n)

    member _.Snapshot = {
        Consumed = Volatile.Read &consumed
        InFlightMessages = Volatile.Read &inFlightMessages
        InFlightBytes = Volatile.Read &inFlightBytes
        PeakInFlightMessages = Volatile.Read &peakMessages
        PeakInFlightBytes = Volatile.Read &peakBytes
        Pauses = Volatile.Read &pauses
        Resumes = Volatile.Read &resumes
        PartitionPauses = Volatile.Read &partitionPauses
        StallFlushes = Volatile.Read &stallFlushes
        Refused = Volatile.Read &refused
        Failures = Volatile.Read &failures
        Restarts = Volatile.Read &restarts
        SyncCommits = Volatile.Read &syncCommits
        AssignedPartitions = Volatile.Read &assigned
    }
