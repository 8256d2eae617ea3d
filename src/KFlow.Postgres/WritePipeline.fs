// The upsert writer's keyed scheduler: several batches in flight at once (each on its own pooled
// connection), yet per key the table sees them in the order they were reserved or written, retries included.
namespace KFlow.Postgres

open System.Collections
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks

/// A batch's place in the pipeline: its prepared rows (or the error preparing them), its distinct
/// keys, when it may run (Ready) and when the batches after it on its keys may (Released).
[<Sealed; AllowNullLiteral>]
type internal PipelineSlot(rows: obj[][], error: exn, keys: obj[], automatic: bool) =
    /// The batch's values, checked and normalized once (null when Error is set).
    member _.Rows = rows
    /// Why the batch could not be prepared (a row the mapper or a column type refuses), or null.
    member _.Error = error
    /// The batch's distinct keys (none for a table without keys).
    member _.Keys = keys
    /// Made by a write without a reservation: released when that write ends, however it ends.
    member _.Automatic = automatic
    /// Completes when every earlier batch holding one of its keys is released.
    member val Ready: Task = Task.CompletedTask with get, set
    /// Completes when this batch lets the later batches of its keys go.
    member val Released = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
    /// A write of it runs now.
    member val Running = false with get, set
    /// A write of it succeeded (its keys are released; the runtime's Release is still to come).
    member val Written = false with get, set
    /// Its keys are released.
    member val Done = false with get, set

/// Key equality: values by Equals, arrays (composite keys, bytea) element by element.
[<Sealed>]
type internal KeyComparer() =
    static member val Instance = KeyComparer()

    interface IEqualityComparer<obj> with
        member _.Equals(a, b) =
            StructuralComparisons.StructuralEqualityComparer.Equals(a, b)

        member _.GetHashCode a =
            StructuralComparisons.StructuralEqualityComparer.GetHashCode a

/// <summary>Orders batches per key while several are in flight. Thread-safe.</summary>
/// <remarks>
/// <list type="number">
/// <item>A batch takes its place when the runtime reserves it (Reserve, in request order) or, without a
/// reservation, when it is written (Take).</item>
/// <item>It is Ready once every batch placed before it that shares a key is released; batches with
/// no key in common run side by side. A table without keys never waits.</item>
/// <item>A write that succeeds releases its batch. A reserved batch whose write failed stays in place
/// (the batches after it on its keys keep waiting) until it is written again (the runtime's retry in
/// place) and succeeds, or until the runtime releases it (Release: it will not be written again). A
/// batch written without a reservation is released when its write ends, however it ends.</item>
/// </list>
/// The writer's own retries of transient failures happen inside one write, so they keep the later
/// batches of the same keys waiting too.
/// </remarks>
[<Sealed>]
type internal WritePipeline(prepare: obj -> obj[][], keyIndexes: int[]) =
    let sync = obj ()
    /// The last placed batch holding each key, until it is released.
    let holders = Dictionary<obj, PipelineSlot>(KeyComparer.Instance)

    /// Reserved batches (by reference) not yet released by the runtime, oldest first.
    let reserved =
        Dictionary<obj, List<PipelineSlot>>(ReferenceEqualityComparer.Instance)

    let mutable inFlight = 0
    let mutable peak = 0
    static let nullKey = obj ()

    let keyOf (row: obj[]) : obj =
        let value (i: int) =
            match row[i] with
            | null -> nullKey
            | v -> v

        if keyIndexes.Length = 1 then
            value keyIndexes[0]
        else
            box (Array.map value keyIndexes)

    /// A slot for a batch, prepared (outside the lock) but not placed yet.
    let slotOf (batch: obj) (automatic: bool) =
        let rows, error =
            try
                prepare batch, null
            with error ->
                null, error

        let keys =
            if isNull rows || keyIndexes.Length = 0 then
                [||]
            else
                let seen = HashSet<obj>(KeyComparer.Instance)

                for row in rows do
                    seen.Add(keyOf row) |> ignore

                Array.ofSeq seen

        PipelineSlot(rows, error, keys, automatic)

    /// Places a slot after the holders of its keys (under the lock).
    let place (slot: PipelineSlot) =
        let before = HashSet<PipelineSlot>(HashIdentity.Reference)

        for key in slot.Keys do
            match holders.TryGetValue key with
            | true, holder -> before.Add holder |> ignore
            | _ -> ()

            holders[key] <- slot

        slot.Ready <-
            match before.Count with
            | 0 -> Task.CompletedTask
            | 1 -> (Seq.head before).Released.Task
            | _ -> Task.WhenAll(before |> Seq.map _.Released.Task)

    /// Lets the batches after the slot on its keys go (once).
    let release (slot: PipelineSlot) =
        let first =
            lock sync (fun () ->
                if slot.Done then
                    false
                else
                    slot.Done <- true

                    for key in slot.Keys do
                        match holders.TryGetValue key with
                        | true, holder when obj.ReferenceEquals(holder, slot) -> holders.Remove key |> ignore
                        | _ -> ()

                    true)

        if first then
            slot.Released.TrySetResult() |> ignore

    /// Reserves the batch's place (the runtime calls it in request order); the Task completes when
    /// the batch may be written.
    member _.Reserve(batch: obj) : Task =
        let slot = slotOf batch false

        lock sync (fun () ->
            place slot

            match reserved.TryGetValue batch with
            | true, slots -> slots.Add slot
            | _ -> reserved[batch] <- List [ slot ])

        slot.Ready

    /// The runtime will not write the batch again: releases its oldest reservation.
    member _.Release(batch: obj) =
        let slot =
            lock sync (fun () ->
                match reserved.TryGetValue batch with
                | true, slots ->
                    let slot = slots[0]
                    slots.RemoveAt 0

                    if slots.Count = 0 then
                        reserved.Remove batch |> ignore

                    slot
                | _ -> null)

        if not (isNull slot) then
            release slot

    /// The slot a write of the batch runs in: its oldest reservation not written yet, or a new
    /// slot placed now (released when the write ends).
    member _.Take(batch: obj) : PipelineSlot =
        let found =
            lock sync (fun () ->
                match reserved.TryGetValue batch with
                | true, slots ->
                    match slots |> Seq.tryFind (fun s -> not s.Running && not s.Written && not s.Done) with
                    | Some slot ->
                        slot.Running <- true
                        slot
                    | None -> null
                | _ -> null)

        if not (isNull found) then
            found
        else
            let slot = slotOf batch true
            slot.Running <- true
            lock sync (fun () -> place slot)
            slot

    /// The slot's write starts to talk to the server (counted for InFlight and Peak).
    member _.Started() =
        let now = Interlocked.Increment &inFlight
        let mutable seen = Volatile.Read &peak

        while now > seen && Interlocked.CompareExchange(&peak, now, seen) <> seen do
            seen <- Volatile.Read &peak

    /// The slot's write ended: a success releases it; a failure releases only a slot without a
    /// reservation (a reserved one waits for its retry or the runtime's Release).
    member _.Ended(slot: PipelineSlot, succeeded: bool, started: bool) =
        if started then
            Interlocked.Decrement &inFlight |> ignore

        lock sync (fun () ->
            slot.Running <- false

            if succeeded then
                slot.Written <- true)

        if succeeded || slot.Automatic then
            release slot

    /// Writes talking to the server now.
    member _.InFlight = Volatile.Read &inFlight

    /// The most writes that talked to the server at once, since the pipeline was made.
    member _.Peak = Volatile.Read &peak

    /// Keys held by batches in flight or waiting (for tests: 0 once everything is released).
    member _.HeldKeys = lock sync (fun () -> holders.Count)
