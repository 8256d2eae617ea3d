// Client-side group commit for the upsert writer: at most N statements talk to the server at once, and
// the batches that wait meanwhile are joined into one transaction (fewer commits, round trips, plans).
namespace KFlow.Postgres

open System
open System.Collections.Generic
open System.Threading.Tasks

/// <summary>Runs writes at most <c>statements</c> at once; writes submitted while that many run wait
/// in one queue and the next free statement takes as many of them as it can in one go. Thread-safe.</summary>
/// <remarks>
/// <list type="number">
/// <item>A statement takes the oldest waiting item, then the items after it, in submission order, while
/// they are <c>joinable</c> with the first and the rows stay within <c>maxRows</c> (one item alone may
/// exceed it).</item>
/// <item>It runs <c>write</c> on the items taken; each item's Task completes when that write does.</item>
/// <item>A write of two or more items that fails with an error <c>alone</c> accepts is run again
/// item by item, in order, so that only the item at fault fails; other errors fail every item.</item>
/// </list>
/// The caller submits an item only when it may be written (for the upsert writer: after the batches
/// before it on its keys were committed), so the items of one write never need an order between them.
/// </remarks>
[<Sealed>]
type internal GroupCommit<'item>
    (
        statements: int,
        maxRows: int,
        rows: 'item -> int,
        joinable: 'item -> 'item -> bool,
        alone: exn -> bool,
        write: 'item[] -> Task
    ) =
    let sync = obj ()

    let waiting = Queue<struct ('item * TaskCompletionSource)>()

    let mutable running = 0
    let mutable joined = 0L
    let mutable statementsRun = 0L

    /// The next statement's items (under the lock); none (and one statement less running) when the
    /// queue is empty.
    let take () =
        if waiting.Count = 0 then
            running <- running - 1
            [||]
        else
            let struct (first, firstDone) = waiting.Dequeue()
            let taken = List<struct ('item * TaskCompletionSource)>()
            taken.Add(struct (first, firstDone))
            let mutable total = rows first
            let mutable more = true

            while more && waiting.Count > 0 do
                let struct (next, _) = waiting.Peek()
                let size = rows next

                if total + size <= maxRows && joinable first next then
                    taken.Add(waiting.Dequeue())
                    total <- total + size
                else
                    more <- false

            statementsRun <- statementsRun + 1L
            joined <- joined + int64 taken.Count
            taken.ToArray()

    let complete (finished: TaskCompletionSource) (outcome: Task) =
        if outcome.IsCompletedSuccessfully then
            finished.TrySetResult() |> ignore
        else
            let error: exn =
                match outcome.Exception with
                | null -> TaskCanceledException()
                | errors when errors.InnerExceptions.Count = 1 -> errors.InnerExceptions[0]
                | errors -> errors

            finished.TrySetException error |> ignore

    /// Runs `write` and returns its Task, a throw turned into a faulted Task.
    let attempt (items: 'item[]) : Task =
        try
            write items
        with error ->
            Task.FromException error

    /// Writes the items of one statement, item by item after a failure `alone` accepts.
    let run (taken: struct ('item * TaskCompletionSource)[]) : Task = task {
        let items = taken |> Array.map (fun struct (item, _) -> item)
        let whole = attempt items

        try
            do! whole
        with _ ->
            ()

        let retryAlone =
            taken.Length > 1
            && not whole.IsCompletedSuccessfully
            && not (isNull whole.Exception)
            && whole.Exception.InnerExceptions |> Seq.forall alone

        if retryAlone then
            for struct (item, finished) in taken do
                let one = attempt [| item |]

                try
                    do! one
                with _ ->
                    ()

                complete finished one
        else
            for struct (_, finished) in taken do
                complete finished whole
    }

    /// Takes and writes statements until the queue is empty (one of the `statements` runners).
    let drain () : Task = task {
        let mutable taken = lock sync take

        while taken.Length > 0 do
            try
                do! run taken
            with error ->
                for struct (_, finished) in taken do
                    finished.TrySetException error |> ignore

            taken <- lock sync take
    }

    do
        if statements < 1 then
            invalidArg (nameof statements) $"statements must be ≥ 1 (got {statements})."

    /// Queues the item; the Task completes when the statement that writes it has (or faults with its
    /// error, or with the item's own error after a retry alone).
    member _.Submit(item: 'item) : Task =
        let finished =
            TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

        let start =
            lock sync (fun () ->
                waiting.Enqueue(struct (item, finished))

                if running < statements then
                    running <- running + 1
                    true
                else
                    false)

        if start then
            // The runner goes on in the thread pool; the submitter only waits for its own item.
            Task.Run<unit>(fun () -> task { do! drain () }) |> ignore

        finished.Task

    /// Statements started since the group commit was made.
    member _.Statements = lock sync (fun () -> statementsRun)

    /// Items written by those statements (Items / Statements: how many were joined on average).
    member _.Items = lock sync (fun () -> joined)
