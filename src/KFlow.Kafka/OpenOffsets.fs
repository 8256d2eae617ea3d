// The offsets a partition loop holds open: the ledger of its partition plus, per unfinished offset,
// its open parts, size and message (for dead-letters and failure reports). Loop thread only.
namespace KFlow.Kafka

open System.Collections.Generic
open KFlow

/// One unfinished offset: its open parts, its size, the message's key as text (for failure reports;
/// the KeyCache's string, shared by the messages of one key, so the key's bytes are not held), the
/// message itself when it may be dead-lettered (null otherwise) and whether the ledger took the
/// delivery.
[<Struct; NoEquality; NoComparison>]
type internal OpenEntry = {
    Parts: int
    Size: int64
    Key: string
    Message: Confluent.Kafka.ConsumeResult<byte[], byte[]> | null
    Delivered: bool
}

/// <summary>The ledger of one partition and its open offsets, for the life of a partition loop.
/// With <c>keepMessages</c> (some policy dead-letters) each open offset keeps its consumed message
/// for DeadLetterable; without, only its key: a message's value, headers and Confluent objects are
/// then not held until its offset finishes (in bench (c) up to 200,000 open offsets kept ~6 objects
/// each alive through every garbage collection).</summary>
[<Sealed>]
type internal OpenOffsets
    (tp: KFlow.TopicPartition, counters: Counters, log: string -> unit, keepMessages: bool) =
    // Written in place (no value per deliver and complete): this loop never goes back to an older one.
    let ledger = OwnedLedger()
    let mutable ledgerAssigned = false
    let opened = Dictionary<int64, OpenEntry>()
    let mutable finished = 0L
    let mutable finishedDelta = 0L
    let mutable bytesDelta = 0L
    let mutable completedDelta = 0L

    let offsetDone (offset: int64) (entry: OpenEntry) =
        opened.Remove offset |> ignore
        finished <- finished + 1L
        finishedDelta <- finishedDelta + 1L
        completedDelta <- completedDelta + 1L
        bytesDelta <- bytesDelta + entry.Size

    let refused (error: LedgerError) =
        counters.Refused()
        log $"{tp}: the ledger refused a completion (ignored): %A{error}"

    /// Open offsets that keep their consumed message (for dead-lettering).
    new(tp: KFlow.TopicPartition, counters: Counters, log: string -> unit) =
        OpenOffsets(tp, counters, log, true)

    /// Messages of this assignment whose offset is finished.
    member _.Finished = finished

    /// The ledger's commit point (ValueNone until the first message of the assignment).
    member _.CommitPoint = if ledgerAssigned then ledger.CommitPoint tp else ValueNone

    /// Delivers a consumed message to the ledger and opens its offset. A refused delivery stays
    /// open (never finished) so the commit point cannot pass it.
    member _.Deliver(cr: Confluent.Kafka.ConsumeResult<byte[], byte[]>, key: string, size: int64) =
        let offset = cr.Offset.Value

        if not ledgerAssigned then
            ledger.Assign(tp, offset)
            ledgerAssigned <- true

        let position = { TopicPartition = tp; Offset = offset }

        match ledger.Deliver position with
        | Ok token ->
            opened[offset] <- {
                Parts = 1
                Size = size
                Key = key
                Message = (if keepMessages then cr else null)
                Delivered = true
            }

            Ok token
        | Error e ->
            opened[offset] <- {
                Parts = 1
                Size = size
                Key = key
                Message = (if keepMessages then cr else null)
                Delivered = false
            }

            Error e

    /// Completes one part of a token's offset; the offset finishes with its last part.
    member _.Complete(token: Token) =
        match ledger.Complete token with
        | Ok() ->
            let offset = token.Position.Offset

            match opened.TryGetValue offset with
            | true, e when e.Parts <= 1 -> offsetDone offset e
            | true, e -> opened[offset] <- { e with Parts = e.Parts - 1 }
            | _ -> ()
        | Error e -> refused e

    /// Splits a token into `parts` parts (0 finishes it).
    member _.Fork(token: Token, parts: int) =
        match ledger.Fork(parts, token) with
        | Ok() ->
            let offset = token.Position.Offset

            match opened.TryGetValue offset with
            | true, e when parts = 0 && e.Parts <= 1 -> offsetDone offset e
            | true, e -> opened[offset] <- { e with Parts = e.Parts - 1 + parts }
            | _ -> ()
        | Error e -> refused e

    /// The key of an open offset's message ("" without a key), when the offset is open.
    member _.KeyAt(offset: int64 voption) =
        match offset with
        | ValueSome o ->
            match opened.TryGetValue o with
            | true, e -> ValueSome e.Key
            | _ -> ValueNone
        | ValueNone -> ValueNone

    /// <summary>The consumed messages of the given tokens' offsets, each once in token order, when
    /// every one of them is open with its message (so all can be dead-lettered); ValueNone if any is
    /// not, or there is no token. The messages are those kept since delivery: no copy, and no more
    /// than the in-flight limits already allow.</summary>
    member _.DeadLetterable(tokens: Token list) =
        let offsets = tokens |> List.map (fun t -> t.Position.Offset) |> List.distinct

        let originals =
            offsets
            |> List.choose (fun o ->
                match opened.TryGetValue o with
                | true, e when not (isNull e.Message) && e.Delivered -> Some(nonNull e.Message)
                | _ -> None)

        if offsets.IsEmpty || originals.Length <> offsets.Length then
            ValueNone
        else
            ValueSome originals

    /// Hands the messages and bytes finished since the last call to the counters.
    member _.ReportFinished() =
        if finishedDelta <> 0L || bytesDelta <> 0L then
            counters.Finished(finishedDelta, bytesDelta, completedDelta)
            finishedDelta <- 0L
            bytesDelta <- 0L
            completedDelta <- 0L

    /// The assignment ends: the ledger drops the partition and every open offset leaves the
    /// in-flight counts.
    member _.Release() =
        if ledgerAssigned then
            ledger.Revoke tp

        ledgerAssigned <- false

        for e in opened.Values do
            finishedDelta <- finishedDelta + 1L
            bytesDelta <- bytesDelta + e.Size

        opened.Clear()
        finished <- 0L
