// A workflow-wide cap on work running at once (async calls: MaxConcurrentCalls; sink writes:
// MaxConcurrentWrites), shared by every partition loop: a task takes a slot before it starts the
// user's function and gives it back when that function's task ends, however it ends.
namespace KFlow.Kafka

open System
open System.Threading
open System.Threading.Tasks

/// At most `limit` functions running at once; Int32.MaxValue means no cap (nothing is counted).
/// Thread-safe. A slot is held from the start of the user's function to the end of its task, so a
/// retry's backoff wait (outside the function) holds none.
[<Sealed>]
type internal ConcurrencyGate(limit: int) =
    let slots =
        if limit = Int32.MaxValue then
            null
        else
            new SemaphoreSlim(limit, limit)

    let release () = slots.Release() |> ignore

    /// Starts `run` now and returns its task, releasing the slot when it ends.
    let startHeld (run: unit -> Task<'T>) =
        let t =
            try
                run ()
            with ex ->
                Task.FromException<'T> ex

        if isNull (box t) then
            release ()
            Task.FromException<'T>(InvalidOperationException "The function returned a null task.")
        elif t.IsCompleted then
            release ()
            t
        else
            t.ContinueWith((fun (_: Task<'T>) -> release ()), TaskContinuationOptions.ExecuteSynchronously)
            |> ignore

            t

    /// The cap (Int32.MaxValue: none).
    member _.Limit = limit

    /// Slots free now (Int32.MaxValue without a cap).
    member _.Free = if isNull slots then Int32.MaxValue else slots.CurrentCount

    /// <summary>Takes a slot if one is free now (always true without a cap); the caller gives it
    /// back with <c>Release</c> once the function it started has ended, however it ended.</summary>
    member _.TryEnter() = isNull slots || slots.Wait 0

    /// Gives back a slot taken by TryEnter (nothing without a cap).
    member _.Release() =
        if not (isNull slots) then
            release ()

    /// <summary>Runs <paramref name="run"/> once a slot is free: at once when one is (the task is
    /// the function's own), else after waiting for one. A wait cancelled by
    /// <paramref name="cancel"/> ends the task as cancelled without calling the function.</summary>
    member _.Run(cancel: CancellationToken, run: unit -> Task<'T>) : Task<'T> =
        if isNull slots then
            run ()
        elif cancel.IsCancellationRequested then
            Task.FromCanceled<'T> cancel
        elif slots.Wait 0 then
            startHeld run
        else
            task {
                do! slots.WaitAsync cancel
                return! startHeld run
            }

    /// A sink write (a Task without a result) run under the gate.
    member this.RunWrite(cancel: CancellationToken, write: unit -> Task) : Task =
        if isNull slots then
            write ()
        else
            this.Run(
                cancel,
                fun () ->
                    match write () with
                    | null -> Task.FromResult()
                    | t -> task { do! t }
            )
            :> Task
