// What a running workflow measures about itself: counters updated by the consumer thread and the
// partition loops, and a per-partition view (committed offset, lag, open offsets, paused), read as a
// snapshot. The C# facade's meter "KFlow" exports them.
namespace KFlow.Kafka

open System.Collections.Generic
open System.Threading

/// One assigned partition as the consumer thread last saw it (refreshed every 250 ms).
type PartitionStats = {
    /// The topic.
    Topic: string
    /// The partition.
    Partition: int
    /// The offset stored for commit: every message below it is finished (librdkafka commits it
    /// within CommitInterval; revokes and stops commit it at once). -1 before the first store.
    Committed: int64
    /// The consumer's position: the next offset it will fetch. -1 when unknown.
    Position: int64
    /// The partition's high watermark (end offset) from the consumer's last fetch. -1 when unknown.
    HighWatermark: int64
    /// HighWatermark minus the safe commit point (the first unfinished offset, what the next store
    /// stores; Committed or Position before the first message); -1 when unknown.
    Lag: int64
    /// Messages of this partition handed to the pipe and not finished (open offsets).
    OpenOffsets: int64
    /// Whether the partition is paused (backpressure or stopping).
    Paused: bool
}

/// A snapshot of a workflow's counters; totals run over every incarnation since Workflow.run.
[<NoComparison; NoEquality>]
type WorkflowStats = {
    /// Messages handed to the pipe (a message read again after a restart or rebalance counts again).
    Consumed: int64
    /// Messages whose offset finished (sunk, filtered out, dead-lettered); a message dropped with
    /// its partition on a revoke or restart is not counted.
    Completed: int64
    /// Retries in place of sink writes and async calls (RetryInPlace, the sink's default retries).
    Retries: int64
    /// Messages dead-lettered (their dead-letter write acknowledged).
    DeadLettered: int64
    /// Messages in flight now (handed to the pipe, offset not finished).
    InFlightMessages: int64
    /// Key + value bytes in flight now.
    InFlightBytes: int64
    /// The most messages ever in flight at once.
    PeakInFlightMessages: int64
    /// The most bytes ever in flight at once.
    PeakInFlightBytes: int64
    /// Times the workflow-wide limits stopped intake (it holds, then pauses every partition if the
    /// limit still holds after 500 ms).
    Pauses: int64
    /// Times the workflow-wide pause was lifted.
    Resumes: int64
    /// Times one partition paused on MaxOpenOffsetsPerPartition.
    PartitionPauses: int64
    /// Times intake held because the partition loops' queues were full (MaxQueuedMessages).
    QueueHolds: int64
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
    /// Assigned partitions paused now.
    PausedPartitions: int
    /// The assigned partitions, as last refreshed by the consumer thread.
    Partitions: IReadOnlyList<PartitionStats>
}

/// The live counters behind WorkflowStats (thread-safe) of the workflow named `name`.
type internal Counters(name: string) =
    let mutable consumed = 0L
    let mutable completed = 0L
    let mutable retries = 0L
    let mutable deadLettered = 0L
    let mutable partitions: PartitionStats[] = [||]
    // In flight = routed - finished. Routed counts are written by the consumer thread only (no
    // interlocked operation per message); finished counts are added by the loops (once per turn).
    let mutable routedMessages = 0L
    let mutable routedBytes = 0L
    let mutable finishedMessages = 0L
    let mutable finishedBytes = 0L
    let mutable peakMessages = 0L
    let mutable peakBytes = 0L
    let mutable pauses = 0L
    let mutable resumes = 0L
    let mutable partitionPauses = 0L
    let mutable queueHolds = 0L
    let mutable refused = 0L
    let mutable stallFlushes = 0L
    let mutable failures = 0L
    let mutable restarts = 0L
    let mutable syncCommits = 0L
    let mutable assigned = 0

    // Finished first: both only grow, so the difference read this way is never below the truth.
    let inFlight () =
        let fm = Volatile.Read &finishedMessages
        let fb = Volatile.Read &finishedBytes

        {
            Messages = Volatile.Read &routedMessages - fm
            Bytes = Volatile.Read &routedBytes - fb
        }

    /// The workflow's name (the stage latency metric's tag).
    member _.Name = name

    member _.InFlight = inFlight ()

    /// A message handed to the pipe (consumer thread only: plain reads, volatile writes, and the
    /// peaks need no lock).
    member _.Routed(size: int64) =
        Volatile.Write(&consumed, consumed + 1L)
        let m = routedMessages + 1L
        let b = routedBytes + size
        Volatile.Write(&routedMessages, m)
        Volatile.Write(&routedBytes, b)
        let m = m - Volatile.Read &finishedMessages
        let b = b - Volatile.Read &finishedBytes

        if m > peakMessages then
            Volatile.Write(&peakMessages, m)

        if b > peakBytes then
            Volatile.Write(&peakBytes, b)

    /// Messages finished (or dropped with their partition) and their bytes; `completed` of them
    /// finished (not dropped).
    member _.Finished(messages: int64, bytes: int64, completedMessages: int64) =
        if completedMessages <> 0L then
            Interlocked.Add(&completed, completedMessages) |> ignore

        if messages <> 0L then
            Interlocked.Add(&finishedMessages, messages) |> ignore

        if bytes <> 0L then
            Interlocked.Add(&finishedBytes, bytes) |> ignore

    /// A new incarnation starts with nothing in flight and no partition.
    member _.ResetInFlight() =
        Volatile.Write(&routedMessages, Volatile.Read &finishedMessages)
        Volatile.Write(&routedBytes, Volatile.Read &finishedBytes)
        Volatile.Write(&partitions, [||])

    /// A retry in place started.
    member _.Retried() =
        Interlocked.Increment &retries |> ignore

    /// A message was dead-lettered.
    member _.DeadLettered() =
        Interlocked.Increment &deadLettered |> ignore

    /// The consumer thread's latest view of its partitions.
    member _.SetPartitions(view: PartitionStats[]) = Volatile.Write(&partitions, view)

    member _.Paused() = Interlocked.Increment &pauses |> ignore

    member _.Resumed() =
        Interlocked.Increment &resumes |> ignore

    member _.PartitionPaused() =
        Interlocked.Increment &partitionPauses |> ignore

    member _.QueueHeld() =
        Interlocked.Increment &queueHolds |> ignore

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
        Completed = Volatile.Read &completed
        Retries = Volatile.Read &retries
        DeadLettered = Volatile.Read &deadLettered
        InFlightMessages = (inFlight ()).Messages
        InFlightBytes = (inFlight ()).Bytes
        PeakInFlightMessages = Volatile.Read &peakMessages
        PeakInFlightBytes = Volatile.Read &peakBytes
        Pauses = Volatile.Read &pauses
        Resumes = Volatile.Read &resumes
        PartitionPauses = Volatile.Read &partitionPauses
        QueueHolds = Volatile.Read &queueHolds
        StallFlushes = Volatile.Read &stallFlushes
        Refused = Volatile.Read &refused
        Failures = Volatile.Read &failures
        Restarts = Volatile.Read &restarts
        SyncCommits = Volatile.Read &syncCommits
        AssignedPartitions = Volatile.Read &assigned
        PausedPartitions = Volatile.Read(&partitions) |> Array.sumBy (fun p -> if p.Paused then 1 else 0)
        Partitions = Volatile.Read &partitions
    }
