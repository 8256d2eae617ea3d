// The offset ledger: which delivered offsets are still being processed, and so how far each
// partition may safely be committed. It is immutable and sits on the hot path of every message.
namespace KFlow

/// <summary>An acknowledgement token: one delivered message whose processing is not finished.</summary>
/// <remarks>The epoch names the assignment the message was delivered in; tokens of an earlier
/// assignment of the same partition are refused with <c>StaleEpoch</c>, so completions that arrive
/// after a revoke can never move a newer assignment's commit point.</remarks>
[<Struct>]
type Token = { Position: Position; Epoch: int }

/// Why a ledger operation was refused. The ledger never throws for these and never ignores them.
type LedgerError =
    /// The partition is not assigned (never assigned, or revoked since).
    | NotAssigned of TopicPartition
    /// The token belongs to an earlier assignment of its partition than the current epoch.
    | StaleEpoch of token: Token * currentEpoch: int
    /// The token's offset was not delivered in this assignment, or all its parts have completed.
    | NotOpen of Token
    /// Offsets are delivered in increasing order, from the assignment's start offset on.
    | OutOfOrder of delivered: Position * nextExpectedAtLeast: int64
    /// A fork must produce zero or more parts.
    | InvalidParts of token: Token * parts: int

/// <summary>The immutable offset ledger of every assigned partition.</summary>
/// <remarks>
/// Per partition it knows the offsets actually delivered (Kafka offsets have gaps: compaction,
/// transaction markers) and how many parts of each are still open. The commit point is the first
/// open offset, or one past the last delivered offset when none is open, or the assignment's start
/// offset when nothing was delivered yet. It never moves backwards within one assignment and
/// never passes an open offset.
/// </remarks>
[<Sealed>]
type Ledger

/// Functions over the ledger; every one is data-last and returns a new ledger.
[<RequireQualifiedAccess>]
module Ledger =
    /// The ledger with no partition assigned.
    val empty: Ledger

    /// <summary>Assigns a partition whose next offset to read is <paramref name="startOffset"/>
    /// (the committed offset), under a new epoch. Re-assigning a partition that is assigned
    /// drops its old state first, as a revoke would.</summary>
    val assign: tp: TopicPartition -> startOffset: int64 -> ledger: Ledger -> Ledger

    /// Drops a partition and all its open offsets. Later tokens of it are refused.
    val revoke: tp: TopicPartition -> ledger: Ledger -> Ledger

    /// The current epoch of an assigned partition.
    val epoch: tp: TopicPartition -> ledger: Ledger -> int voption

    /// Records that a message was delivered; it is open, with one part, until completed.
    /// Returns the ledger and the message's token.
    val deliver: position: Position -> ledger: Ledger -> Result<struct (Ledger * Token), LedgerError>

    /// <summary>Splits one open part of a token into <paramref name="parts"/> parts (one input became
    /// that many outputs). The offset completes when every part has. Zero parts completes the part,
    /// as a filter that drops the message does.</summary>
    val fork: parts: int -> token: Token -> ledger: Ledger -> Result<Ledger, LedgerError>

    /// Completes one part of a token. Completing an unknown, stale or already-completed token is
    /// an error value.
    val complete: token: Token -> ledger: Ledger -> Result<Ledger, LedgerError>

    /// The offset to commit for a partition (Kafka's convention: the next offset to consume), or
    /// ValueNone if it is not assigned.
    val commitPoint: tp: TopicPartition -> ledger: Ledger -> int64 voption

    /// The commit point of every assigned partition, in topic-partition order.
    val commitPoints: ledger: Ledger -> (TopicPartition * int64) list

    /// How many delivered offsets of a partition are still open (0 when not assigned).
    val openCount: tp: TopicPartition -> ledger: Ledger -> int

    /// <summary>The open offsets of a partition with their open parts, in increasing offset order
    /// (empty when not assigned).</summary>
    /// <remarks>For diagnostics and tests: it costs O(open offsets), unlike the other functions.</remarks>
    val openOffsets: tp: TopicPartition -> ledger: Ledger -> (int64 * int) list

    /// The assigned partitions, in topic-partition order.
    val assigned: ledger: Ledger -> TopicPartition list

    /// Delivers into the Ledger an OwnedLedger owns, in place. Internal.
    val internal deliverOwned: position: Position -> ledger: Ledger -> Result<Token, LedgerError>

    /// Splits a part in the Ledger an OwnedLedger owns, in place. Internal.
    val internal forkOwned: parts: int -> token: Token -> ledger: Ledger -> Result<unit, LedgerError>

    /// Completes a part in the Ledger an OwnedLedger owns, in place. Internal.
    val internal completeOwned: token: Token -> ledger: Ledger -> Result<unit, LedgerError>

/// <summary>A ledger one owner updates in place: the answers of Ledger's functions, without a new
/// value per deliver and complete and without keeping older versions (a runtime's partition loop
/// never goes back to one). Not thread-safe.</summary>
[<Sealed>]
type internal OwnedLedger =
    new: unit -> OwnedLedger
    /// As Ledger.assign.
    member Assign: tp: TopicPartition * startOffset: int64 -> unit
    /// As Ledger.revoke.
    member Revoke: tp: TopicPartition -> unit
    /// As Ledger.deliver.
    member Deliver: position: Position -> Result<Token, LedgerError>
    /// As Ledger.complete.
    member Complete: token: Token -> Result<unit, LedgerError>
    /// As Ledger.fork.
    member Fork: parts: int * token: Token -> Result<unit, LedgerError>
    /// As Ledger.epoch.
    member Epoch: tp: TopicPartition -> int voption
    /// As Ledger.commitPoint.
    member CommitPoint: tp: TopicPartition -> int64 voption
    /// As Ledger.commitPoints.
    member CommitPoints: (TopicPartition * int64) list
    /// As Ledger.openCount.
    member OpenCount: tp: TopicPartition -> int
    /// As Ledger.openOffsets.
    member OpenOffsets: tp: TopicPartition -> (int64 * int) list
    /// As Ledger.assigned.
    member Assigned: TopicPartition list
