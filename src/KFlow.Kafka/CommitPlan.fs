// Commit bookkeeping: which offset the consumer thread may store for a partition, from the ledger's
// commit point, the last offset handed to the pipe and the consumer's position. Pure, so it is
// tested on its own.
namespace KFlow.Kafka

/// Functions deciding what offset to store.
[<RequireQualifiedAccess>]
module internal CommitPlan =
    /// <summary>The offset to store now for a partition, or ValueNone to store nothing.</summary>
    /// <remarks>
    /// 1. The candidate is the ledger's commit point of the current assignment.
    /// 2. When every offset handed to the pipe is finished (the commit point is one past the last
    ///    routed offset), or nothing was routed yet, the consumer's position may be further on: the
    ///    records between were skipped by the client (aborted transactions, control markers), never
    ///    returned, so it is safe to store the position and a gap cannot stall the commit.
    ///    The caller passes no position while it holds messages returned but not routed yet.
    /// 3. Nothing is stored that is not beyond the offset stored last (offsets only move forward).
    /// </remarks>
    let toStore
        (commitPoint: int64 voption)
        (lastRouted: int64 voption)
        (position: int64 voption)
        (stored: int64 voption)
        =
        let idle =
            match lastRouted, commitPoint with
            | ValueNone, _ -> true
            | ValueSome last, ValueSome point -> point = last + 1L
            | ValueSome _, ValueNone -> false

        let candidate =
            match commitPoint, position with
            | ValueSome point, ValueSome pos when idle -> ValueSome(max point pos)
            | ValueNone, ValueSome pos when idle -> ValueSome pos
            | point, _ -> point

        match candidate, stored with
        | ValueSome c, ValueSome s when c <= s -> ValueNone
        | ValueSome c, _ when c < 0L -> ValueNone
        | c, _ -> c
