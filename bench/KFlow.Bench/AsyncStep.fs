// Bench (e)'s async step and the timers behind it. Task.Delay's timers run on
// Environment.TickCount64, which .NET on Linux reads from CLOCK_MONOTONIC_COARSE (dotnet/coreclr
// PR 2293): here it moves in 4 ms steps, so Task.Delay 5 ms lasts 8 ms on average. PreciseDelay
// waits on the Stopwatch clock, so a 5 ms step lasts 5-6 ms, as the benchmark means it to.
module KFlow.Bench.AsyncStep

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open System.Threading.Tasks

/// Delays timed on the Stopwatch clock by one background thread, completed (like Task.Delay's
/// timers) in one thread-pool work item per batch of due delays. Never early.
[<Sealed>]
type PreciseDelay() =
    let gate = obj ()
    let due = PriorityQueue<TaskCompletionSource, int64>()
    let signal = new AutoResetEvent false
    let mutable earliest = Int64.MaxValue

    let fire (ready: List<TaskCompletionSource>) =
        ThreadPool.UnsafeQueueUserWorkItem(
            (fun (ready: List<TaskCompletionSource>) ->
                for t in ready do
                    t.TrySetResult() |> ignore),
            ready,
            false
        )
        |> ignore

    let run () =
        while true do
            let now = Stopwatch.GetTimestamp()
            let ready = List<TaskCompletionSource>()
            let mutable wait = Timeout.Infinite

            lock gate (fun () ->
                let mutable go = true

                while go && due.Count > 0 do
                    let mutable tcs = Unchecked.defaultof<TaskCompletionSource>
                    let mutable at = 0L
                    due.TryPeek(&tcs, &at) |> ignore

                    if at <= now then
                        due.Dequeue() |> ignore
                        ready.Add tcs
                    else
                        go <- false
                        // Rounded up: a delay may end late, never early.
                        wait <- int (Math.Ceiling(Stopwatch.GetElapsedTime(now, at).TotalMilliseconds))

                earliest <-
                    if due.Count > 0 then
                        let mutable tcs = Unchecked.defaultof<TaskCompletionSource>
                        let mutable at = 0L
                        due.TryPeek(&tcs, &at) |> ignore
                        at
                    else
                        Int64.MaxValue)

            if ready.Count > 0 then
                fire ready
            else
                signal.WaitOne wait |> ignore

    do Thread(ThreadStart run, IsBackground = true, Name = "bench-precise-delay").Start()

    /// A task completing once `delay` has passed on the Stopwatch clock.
    member _.Delay(delay: TimeSpan) : Task =
        let tcs = TaskCompletionSource()

        let at =
            Stopwatch.GetTimestamp()
            + int64 (delay.TotalSeconds * float Stopwatch.Frequency)

        let wake =
            lock gate (fun () ->
                due.Enqueue(tcs, at)

                if at < earliest then
                    earliest <- at
                    true
                else
                    false)

        if wake then
            signal.Set() |> ignore

        tcs.Task

/// How (e)'s step waits its 5 ms.
type Timer =
    /// Task.Delay: the thread pool's timers (TickCount64, 4 ms steps here).
    | TaskDelay
    /// PreciseDelay: the Stopwatch clock.
    | Precise

/// The one PreciseDelay of the process.
let private precise = lazy (PreciseDelay())

/// A wait of `delay` with the given timer.
let wait (timer: Timer) (delay: TimeSpan) : Task =
    match timer with
    | TaskDelay -> Task.Delay delay
    | Precise -> precise.Value.Delay delay

/// The timers' own ceiling: `keys` chains of `perKey` sequential waits of `delay`, all at once, with
/// nothing else running; waits/s.
let ceiling (timer: Timer) (keys: int) (perKey: int) (delay: TimeSpan) =
    let clock = Stopwatch.StartNew()

    let chains =
        Array.init keys (fun _ ->
            task {
                for _ in 1..perKey do
                    do! wait timer delay
            }
            :> Task)

    Task.WaitAll chains
    float (keys * perKey) / clock.Elapsed.TotalSeconds
