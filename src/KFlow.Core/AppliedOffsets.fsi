// Signature of applied-offset stores: where an exactly-once sink records, with its effects, which
// source offsets it applied, so the runtime can skip them after a crash instead of applying them twice.
namespace KFlow

open System
open System.Threading.Tasks

/// <summary>What a sink in exactly-once mode records beside its effects: the source offsets whose effect
/// each write applied, in the same transaction as the effect. The runtime reads it when it is assigned
/// a partition (see AppliedOffsets).</summary>
/// <remarks>Offsets below Kafka's committed offset are finished anyway, so a store only needs the
/// offsets at or above it; it may forget the others (Prune).</remarks>
[<NoEquality; NoComparison>]
type AppliedOffsetStore = {

    /// The consumer group whose offsets the store records; it must be the workflow's group.
    GroupId: string

    /// <summary>The applied offsets at or above each given (partition, Kafka committed offset), in
    /// ascending order; a partition without any may be absent. The store may forget offsets below the
    /// committed ones while it answers.</summary>
    Load: (TopicPartition * int64) list -> Task<Map<TopicPartition, int64[]>>

    /// Forgets the recorded offsets below each given (partition, Kafka committed offset).
    Prune: (TopicPartition * int64) list -> Task
}

/// <summary>A write of an exactly-once sink refused because its partition was claimed by another owner
/// after the writer's own claim (an instance assigned the partition later, which reads the applied
/// offsets itself): nothing of the write was applied, and it must not be retried.</summary>
/// <remarks>The runtime neither retries nor dead-letters it; a fenced write of a partition the instance no
/// longer owns is dropped (its messages are the new owner's), one of a partition it still owns fails the
/// workflow like any failed write.</remarks>
type FencedWriteException =
    inherit Exception

    /// A fenced write; the message says which partition, claim and store.
    new: message: string -> FencedWriteException

/// Functions over recorded applied offsets.
[<RequireQualifiedAccess>]
module AppliedOffsets =

    /// <summary>Where to resume reading a partition: <paramref name="committed"/> (Kafka's committed
    /// offset) moved past the applied offsets that follow it one by one. A gap (an offset not applied,
    /// or not a message at all) stops it; the applied offsets after the gap are skipped when read.</summary>
    val resumeAt: committed: int64 -> applied: int64[] -> int64

    /// <summary>The distinct source positions of an envelope's tokens, in token order: the messages
    /// whose effect writing the envelope applies.</summary>
    val positionsOf: envelope: Envelope<'a> -> Position list

    /// <summary>Whether a write failed because it was fenced: the error, or one inside it (inner or
    /// aggregated), is a FencedWriteException.</summary>
    val isFenced: error: exn -> bool
