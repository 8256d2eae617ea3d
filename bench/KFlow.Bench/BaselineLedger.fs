// The mutable baseline the ledger is measured against: the same semantics (epochs, part counts,
// error values, commit point) over a SortedSet of open offsets per partition, updated in place.
namespace KFlow.Bench

// FS3265: SortedSet<'T>.Min is annotated maybe-null for unconstrained 'T; for int64 it never is.
#nowarn "3265"

open System.Collections.Generic
open KFlow

/// One assigned partition of the baseline.
[<Sealed>]
type BaselinePartition(epoch: int, startOffset: int64) =
    /// The assignment's epoch.
    member val Epoch = epoch
    /// The lowest offset the next delivery may have.
    member val NextAtLeast = startOffset with get, set
    /// The open offsets.
    member val Open = SortedSet<int64>()
    /// Open offsets with more than one open part.
    member val Multi = Dictionary<int64, int>()

/// A mutable offset tracker with the ledger's semantics.
[<Sealed>]
type BaselineLedger() =
    let partitions = Dictionary<TopicPartition, BaselinePartition>()
    let mutable nextEpoch = 1

    member private _.Change(token: Token, change: int -> int) : Result<unit, LedgerError> =
        let tp = token.Position.TopicPartition

        match partitions.TryGetValue tp with
        | false, _ -> Error(NotAssigned tp)
        | true, p when p.Epoch <> token.Epoch -> Error(StaleEpoch(token, p.Epoch))
        | true, p ->
            let offset = token.Position.Offset

            if not (p.Open.Contains offset) then
                Error(NotOpen token)
            else
                let parts =
                    match p.Multi.TryGetValue offset with
                    | true, n -> n
                    | _ -> 1

                match change parts with
                | 0 ->
                    p.Open.Remove offset |> ignore
                    p.Multi.Remove offset |> ignore
                | 1 -> p.Multi.Remove offset |> ignore
                | n -> p.Multi[offset] <- n

                Ok()

    /// Assigns a partition at its start offset under a new epoch.
    member _.Assign(tp: TopicPartition, startOffset: int64) =
        partitions[tp] <- BaselinePartition(nextEpoch, startOffset)
        nextEpoch <- nextEpoch + 1

    /// Drops a partition.
    member _.Revoke(tp: TopicPartition) = partitions.Remove tp |> ignore

    /// Records a delivered message and returns its token.
    member _.Deliver(position: Position) : Result<Token, LedgerError> =
        match partitions.TryGetValue position.TopicPartition with
        | false, _ -> Error(NotAssigned position.TopicPartition)
        | true, p when position.Offset < p.NextAtLeast -> Error(OutOfOrder(position, p.NextAtLeast))
        | true, p ->
            p.Open.Add position.Offset |> ignore
            p.NextAtLeast <- position.Offset + 1L
            Ok { Position = position; Epoch = p.Epoch }

    /// Splits one open part of a token into `parts` parts.
    member this.Fork(parts: int, token: Token) =
        if parts < 0 then
            Error(InvalidParts(token, parts))
        else
            this.Change(token, (fun n -> n - 1 + parts))

    /// Completes one part of a token.
    member this.Complete(token: Token) = this.Change(token, (fun n -> n - 1))

    /// The first open offset, or the next expected one when none is open.
    member _.CommitPoint(tp: TopicPartition) : int64 voption =
        match partitions.TryGetValue tp with
        | false, _ -> ValueNone
        | true, p -> ValueSome(if p.Open.Count = 0 then p.NextAtLeast else p.Open.Min)
