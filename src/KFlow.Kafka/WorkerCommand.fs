// The protocol between the consumer thread and a partition loop: the commands the loop reads from
// its channel, and the commit point it publishes back.
namespace KFlow.Kafka

open System.Threading.Tasks
open KFlow

/// What the consumer thread reads of a partition loop: its commit point for one assignment.
[<NoEquality; NoComparison>]
type internal Published = {
    /// The assignment (generation) the values belong to; -1 between assignments.
    Generation: int
    /// The ledger's commit point (ValueNone until the first message of the assignment).
    CommitPoint: int64 voption
    /// Messages of this assignment whose offset is finished.
    Finished: int64
}

/// A consumed message and its key + value size, as the consumer thread hands it on.
type internal Consumed = (struct (Confluent.Kafka.ConsumeResult<byte[], byte[]> * int64))

[<NoEquality; NoComparison>]
type internal WorkerCommand =
    /// A new assignment of the partition starts. In exactly-once mode `skip` holds the offsets whose
    /// effect is applied already (completed when read, not run again); null otherwise.
    | Assign of generation: int * skip: System.Collections.Generic.HashSet<int64>
    /// Consumed messages of the partition in offset order, handed on together: one command per
    /// burst of Consume calls instead of one per message (fewer channel writes and loop wake-ups).
    | Deliver of batch: ResizeArray<Consumed>
    /// A sink write of an assignment ended (error None = success).
    | SinkDone of generation: int * request: SinkRequest * error: exn option
    /// The clock ticked.
    | Clock
    /// Intake stalled: flush the pipe's buffers now.
    | Nudge
    /// Push the event (Revoked or Flush), then wait until no write or call is in flight; then answer.
    | Drain of generation: int * event: Event<obj> * answer: TaskCompletionSource
    /// The assignment ends: drop the pipe's state and the ledger's partition.
    | Release of generation: int
    /// The dead-letter writes of a failed input of an assignment ended (error None = every one
    /// acknowledged): its tokens complete (one part each).
    | DeadLettered of generation: int * tokens: Token list * stage: string * error: exn option
    /// Completions wait in the loop's completion queue (they are handled before queued commands).
    | Wake
    /// The incarnation ends: stop the loop.
    | Abandon
