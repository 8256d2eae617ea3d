// Running a workflow: Workflow.run validates the options, starts the first incarnation and a
// supervisor that applies the error policies (restart from committed offsets with backoff, or halt),
// and returns a handle with a graceful StopAsync, a Completion task and the workflow's health.
namespace KFlow.Kafka

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open KFlow

/// The error a workflow's Completion faults with under ErrorPolicy.Halt: where and what failed.
type WorkflowFailedException
    internal
    (
        message: string,
        topicPartition: TopicPartition voption,
        offset: int64 voption,
        key: string voption,
        stage: string,
        inner: exn
    ) =
    inherit Exception(message, inner)
    /// The partition of the failed message (ValueNone for a consumer-level failure).
    member _.TopicPartition = topicPartition
    /// The offset of the failed message, when known.
    member _.Offset = offset
    /// The key of the failed message ("" for a null key), when known.
    member _.Key = key
    /// The stage, sink or async map that failed ("consumer" or "runtime" for the runtime itself).
    member _.Stage = stage

/// The health of a running workflow, updated by its supervisor (thread-safe).
[<Sealed>]
type internal HealthCell() =
    let gate = obj ()
    let changed = Event<WorkflowState>()

    let mutable health = {
        State = WorkflowState.Starting
        LastFailure = None
        ConsecutiveFailures = 0
    }

    member _.Health = lock gate (fun () -> health)
    member _.Changed = changed.Publish

    /// Applies `update`; raises Changed (outside the lock) when the state changed.
    member _.Update(update: WorkflowHealth -> WorkflowHealth) =
        let before, after =
            lock gate (fun () ->
                let before = health
                health <- update health
                before, health)

        if not (obj.ReferenceEquals(before.State, after.State)) then
            try
                changed.Trigger after.State
            with _ ->
                ()

/// A running workflow. Disposing it stops it gracefully (as StopAsync).
[<Sealed>]
type WorkflowHandle
    internal
    (name: string, completion: Task, stop: CancellationTokenSource, counters: Counters, health: HealthCell) =
    /// The workflow's name.
    member _.Name = name

    /// The current state: Starting, Running, BackingOff (after a failure), Stopped or Failed.
    member _.State = health.Health.State

    /// A snapshot of the workflow's health: state, last failure (partition, offset, key, stage,
    /// exception) and consecutive failures. See WorkflowHealth.isHealthy.
    member _.Health = health.Health

    /// Raised on every state change, with the new state, from the runtime's threads (keep handlers
    /// quick; an exception in one is ignored).
    [<CLIEvent>]
    member _.StateChanged = health.Changed

    /// <summary>Completes when the workflow has stopped after StopAsync; faults with a
    /// WorkflowFailedException when it halts on a failure (ErrorPolicy.Halt), or with a
    /// WorkflowStartException when the cluster shows a setting to be wrong at start.</summary>
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
    /// The whole stop takes at most twice DrainTimeout (3. at most one; 4., retried during a
    /// rebalance, 5. and the end of the partition loops share the rest); a close still running then
    /// goes on in the background.
    /// </remarks>
    member _.StopAsync() : Task =
        stop.Cancel()
        completion.ContinueWith(fun (_: Task) -> ())

    interface IAsyncDisposable with
        member this.DisposeAsync() = ValueTask(this.StopAsync())

/// Running pipes on Kafka.
[<RequireQualifiedAccess>]
module Workflow =
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
        let timed = StageTiming.pipe options.Name pipe
        // Owned: each partition loop is its run's one caller and never goes back to an older version.
        let newRun () = PipeRun.startOwnedWith Defer timed
        let exactlyOnce = ExactlyOnce.ofPipe options pipe
        let counters = Counters(options.Name)
        let stop = new CancellationTokenSource()
        let health = HealthCell()
        let handling = FailureHandling.create counters options
        // One pair of gates per run, shared by its incarnations: calls still running after a restart
        // keep their slots until they end, so the caps hold across restarts too.
        let callGate = ConcurrencyGate options.MaxConcurrentCalls
        let writeGate = ConcurrencyGate options.MaxConcurrentWrites

        let running () =
            health.Update(fun h -> { h with State = WorkflowState.Running })

        let create () =
            Incarnation(
                options,
                newRun,
                counters,
                stop.Token,
                handling,
                callGate,
                writeGate,
                exactlyOnce,
                running
            )
        // The first consumer is built here, so a bad librdkafka property fails the call itself.
        let first =
            try
                create ()
            with
            | :? InvalidOperationException
            | :? ArgumentException as e ->
                handling.DeadLetters |> Option.iter (fun d -> (d :> IDisposable).Dispose())

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
                    Key = ValueNone
                    Stage = "consumer"
                    Error = ex
                }
            )

        let infoOf (report: FailureReport) = {
            TopicPartition = report.TopicPartition
            Offset = report.Offset
            Key = report.Key
            Stage = report.Stage
            Error = report.Error
            At = DateTimeOffset.UtcNow
        }

        let failureText (report: FailureReport) =
            $"Workflow '{options.Name}': {FailureInfo.describe (infoOf report)}"

        let fallback = ErrorPolicies.workflowBackoff handling.Policies

        let halt (info: FailureInfo) (error: exn) =
            health.Update(fun h -> {
                h with
                    State = WorkflowState.Failed info
                    LastFailure = Some info
                    ConsecutiveFailures = h.ConsecutiveFailures + 1
            })

            raise error

        let supervise () = task {
            try
                try
                    do! Task.Run(fun () -> Preflight.check options)
                with :? WorkflowStartException as e ->
                    log e.Message
                    first.Discard()

                    halt
                        {
                            TopicPartition = ValueNone
                            Offset = ValueNone
                            Key = ValueNone
                            Stage = "start"
                            Error = e
                            At = DateTimeOffset.UtcNow
                        }
                        e

                let mutable current = Ok first
                let mutable schedule = RestartSchedule.start
                let mutable finished = false

                while not finished do
                    let started = Stopwatch.StartNew()
                    counters.ResetInFlight()

                    let outcomeTask =
                        match current with
                        | Ok incarnation -> incarnation.Start()
                        | Error ex -> failedToStart ex

                    // An incarnation running for the backoff's Max without failing makes the workflow
                    // healthy again (the same rule resets the restart delays).
                    if schedule.ConsecutiveFailures > 0 then
                        let! _ = Task.WhenAny(outcomeTask, Task.Delay(fallback.Max, stop.Token))

                        if not outcomeTask.IsCompleted && not stop.IsCancellationRequested then
                            schedule <- RestartSchedule.healthy schedule
                            health.Update(fun h -> { h with ConsecutiveFailures = 0 })

                    let! outcome = outcomeTask

                    match outcome with
                    | Outcome.Stopped ->
                        log $"Workflow '{options.Name}' stopped."
                        finished <- true
                    | Outcome.Failed report when stop.IsCancellationRequested ->
                        log $"{failureText report} (while stopping)"
                        finished <- true
                    | Outcome.Failed report ->
                        let text = failureText report
                        let info = infoOf report
                        let policy = FailureHandling.policyOf report.Stage handling

                        match ErrorPolicy.terminal policy with
                        | Halt ->
                            log $"{text}; halting."

                            halt
                                info
                                (WorkflowFailedException(
                                    text,
                                    report.TopicPartition,
                                    report.Offset,
                                    report.Key,
                                    report.Stage,
                                    report.Error
                                ))
                        | _ ->
                            let backoff = ErrorPolicy.restartBackoff fallback policy

                            let next, delay =
                                RestartSchedule.failed (handling.Draw()) started.Elapsed backoff schedule

                            schedule <- next

                            health.Update(fun h -> {
                                State = WorkflowState.BackingOff(info, delay)
                                LastFailure = Some info
                                ConsecutiveFailures = next.ConsecutiveFailures
                            })

                            log
                                $"{text}; restarting from the committed offsets in {delay} (attempt {next.ConsecutiveFailures})."

                            try
                                do! Task.Delay(delay, stop.Token)
                            with :? OperationCanceledException ->
                                ()

                            if stop.IsCancellationRequested then
                                finished <- true
                            else
                                counters.Restarted()

                                health.Update(fun h -> {
                                    h with
                                        State = WorkflowState.Starting
                                })

                                current <-
                                    try
                                        Ok(create ())
                                    with ex ->
                                        Error ex

                health.Update(fun h -> { h with State = WorkflowState.Stopped })
            finally
                handling.DeadLetters |> Option.iter (fun d -> (d :> IDisposable).Dispose())
        }

        WorkflowHandle(options.Name, supervise () :> Task, stop, counters, health)
