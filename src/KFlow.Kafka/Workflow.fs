// Running a workflow: Workflow.run validates the options, starts the first incarnation and a
// supervisor that applies the failure policy (restart from committed offsets with backoff, or halt),
// and returns a handle with a graceful StopAsync and a Completion task.
namespace KFlow.Kafka

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open KFlow

/// The error a workflow's Completion faults with under FailurePolicy.Halt: where and what failed.
type WorkflowFailedException
    internal
    (message: string, topicPartition: TopicPartition voption, offset: int64 voption, stage: string, inner: exn)
    =
    inherit Exception(message, inner)
    /// The partition of the failed message (ValueNone for a consumer-level failure).
    member _.TopicPartition = topicPartition
    /// The offset of the failed message, when known.
    member _.Offset = offset
    /// The stage, sink or async map that failed ("consumer" or "runtime" for the runtime itself).
    member _.Stage = stage

/// A running workflow. Disposing it stops it gracefully (as StopAsync).
[<Sealed>]
type WorkflowHandle
    internal (name: string, completion: Task, stop: CancellationTokenSource, counters: Counters) =
    /// The workflow's name.
    member _.Name = name

    /// <summary>Completes when the workflow has stopped after StopAsync; faults with a
    /// WorkflowFailedException when it halts on a failure (FailurePolicy.Halt).</summary>
    member _.Completion = completion

    /// A snapshot of the workflow's counters.
    member _.Stats: WorkflowStats = counters.Snapshot

    /// <summary>Stops the workflow gracefully and returns when it has stopped (it never throws; a
    /// failure shows in Completion).</summary>
    /// <remarks>
    /// 1. Intake stops: every partition is paused (the consumer keeps polling).
    /// 2. Every partition's pipe receives Flush: aggregates emit what they hold.
    /// 3. In-flight sink writes and async calls finish, for at most DrainTimeout.
    /// 4. The commit points reached are stored and committed synchronously.
    /// 5. The consumer closes (leaves its group).
    /// </remarks>
    member _.StopAsync() : Task =
        stop.Cancel()
        completion.ContinueWith(fun (_: Task) -> ())

    interface IAsyncDisposable with
        member this.DisposeAsync() = ValueTask(this.StopAsync())

/// Running pipes on Kafka.
[<RequireQualifiedAccess>]
module Workflow =
    let private failureText (name: string) (report: FailureReport) =
        let where =
            match report.TopicPartition, report.Offset with
            | ValueSome tp, ValueSome offset -> $" on {tp} at offset {offset}"
            | ValueSome tp, ValueNone -> $" on {tp}"
            | _ -> ""

        $"Workflow '{name}': stage '{report.Stage}' failed{where}: {report.Error.Message}"

    /// <summary>Starts a workflow: consumes the options' topics in their group and runs
    /// <paramref name="pipe"/> on every assigned partition (one loop per partition, concurrently).
    /// The pipe receives each message's value bytes (null for a tombstone); the envelope carries
    /// its key (UTF-8), offset and timestamp. ArgumentException on invalid options (naming the
    /// setting) or an unknown librdkafka property.</summary>
    /// <remarks>A failure (a stage throws, a sink write or async call fails) stops the current
    /// incarnation without committing past the failed message; by default the workflow restarts
    /// from the committed offsets after a backoff (FailurePolicy).</remarks>
    let run (options: WorkflowOptions) (pipe: Pipe<byte[], 'o>) : WorkflowHandle =
        let options = WorkflowOptions.validate options
        let userLog = options.Log

        // A throwing log callback must not take a consumer thread or a partition loop down.
        let log (line: string) =
            try
                userLog line
            with _ ->
                ()

        let options = { options with Log = log }
        let newRun () = PipeRun.startWith Defer pipe
        let counters = Counters()
        let stop = new CancellationTokenSource()

        let create () =
            Incarnation(options, newRun, counters, stop.Token)
        // The first consumer is built here, so a bad librdkafka property fails the call itself.
        let first =
            try
                create ()
            with :? InvalidOperationException as e ->
                raise (
                    ArgumentException(
                        $"The Kafka consumer refused its configuration ({e.Message}); check WorkflowOptions.Properties.",
                        "Properties",
                        e
                    )
                )

        let failedToStart (ex: exn) =
            Task.FromResult(
                Outcome.Failed {
                    TopicPartition = ValueNone
                    Offset = ValueNone
                    Stage = "consumer"
                    Error = ex
                }
            )

        let supervise () = task {
            let mutable current = Ok first
            let mutable attempt = 0
            let mutable finished = false

            while not finished do
                let started = Stopwatch.StartNew()
                counters.ResetInFlight()

                let! outcome =
                    match current with
                    | Ok incarnation -> incarnation.Start()
                    | Error ex -> failedToStart ex

                match outcome with
                | Outcome.Stopped ->
                    log $"Workflow '{options.Name}' stopped."
                    finished <- true
                | Outcome.Failed report when stop.IsCancellationRequested ->
                    log $"{failureText options.Name report} (while stopping)"
                    finished <- true
                | Outcome.Failed report ->
                    let text = failureText options.Name report

                    match options.OnFailure with
                    | Halt ->
                        log $"{text}; halting."

                        raise (
                            WorkflowFailedException(
                                text,
                                report.TopicPartition,
                                report.Offset,
                                report.Stage,
                                report.Error
                            )
                        )
                    | RestartWithBackoff backoff ->
                        attempt <- (if started.Elapsed >= backoff.Max then 1 else attempt + 1)
                        let delay = Backoff.delay attempt backoff
                        log $"{text}; restarting from the committed offsets in {delay} (attempt {attempt})."

                        try
                            do! Task.Delay(delay, stop.Token)
                        with :? OperationCanceledException ->
                            ()

                        if stop.IsCancellationRequested then
                            finished <- true
                        else
                            counters.Restarted()

                            current <-
                                try
                                    Ok(create ())
                                with ex ->
                                    Error ex
        }

        WorkflowHandle(options.Name, supervise () :> Task, stop, counters)
