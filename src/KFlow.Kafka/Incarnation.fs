// One incarnation of a workflow: one Confluent consumer driven by one dedicated thread, which polls,
// routes messages to the partition loops (through the Intake), stores commit points and handles
// rebalances. A failure ends the incarnation; the workflow's supervisor decides what comes next.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open KFlow

[<Sealed>]
type internal Incarnation
    (
        options: WorkflowOptions,
        newRun: unit -> PipeRun,
        counters: Counters,
        stop: CancellationToken,
        handling: FailureHandling,
        callGate: ConcurrencyGate,
        writeGate: ConcurrencyGate,
        exactlyOnce: ExactlyOnce,
        assigned: unit -> unit
    ) =
    let log = options.Log
    let name = options.Name

    let workers = Dictionary<KFlow.TopicPartition, PartitionWorker>()
    let slots = Dictionary<KFlow.TopicPartition, Slot>()
    let failureLock = obj ()
    let mutable failure: FailureReport option = None
    let mutable nextGeneration = 0

    // Set with the first failure: read by the intake for every message without taking the lock.
    let mutable failed = false

    let fail (report: FailureReport) =
        lock failureLock (fun () ->
            if failure.IsNone then
                failure <- Some report
                Volatile.Write(&failed, true))

    let currentFailure () =
        if Volatile.Read &failed then
            lock failureLock (fun () -> failure)
        else
            None

    let ours = Slot.partitionOf

    let workerOf tp =
        match workers.TryGetValue tp with
        | true, w -> w
        | _ ->
            let w =
                PartitionWorker(tp, newRun, counters, log, fail, handling, callGate, writeGate)

            workers[tp] <- w
            w

    // The consumer is created below; the handlers close over this cell.
    let mutable consumer: IConsumer<byte[], byte[]> = Unchecked.defaultof<_>

    let intake =
        Intake(options, counters, slots, (fun () -> consumer), (fun () -> Volatile.Read &failed))

    let store (slot: Slot) = Committer.store log name consumer slot

    let commitSync (slots: Slot seq) =
        Committer.commitSync log name counters consumer slots

    /// Waits at most `within` (zero: no wait) for the tasks; logs when they did not all finish.
    let waitWithin (within: TimeSpan) (what: string) (tasks: Task[]) =
        let within = max TimeSpan.Zero within

        let finished =
            try
                Task.WaitAll(tasks, within)
            with _ ->
                false

        if not finished then
            log $"{name}: {what} did not finish within {within}; going on"

    let waitAll (what: string) (tasks: Task[]) =
        waitWithin options.DrainTimeout what tasks

    /// Exactly-once mode: where each partition starts and what it skips (ExactlyOnce.Resume). A store
    /// that cannot answer fails the incarnation, which then reads nothing and restarts.
    let resumeOf (parts: List<Confluent.Kafka.TopicPartition>) =
        if not exactlyOnce.Enabled then
            Map.empty
        else
            try
                exactlyOnce.Resume(consumer, parts)
                |> List.map (fun r -> ours r.Start.TopicPartition, r)
                |> Map.ofList
            with e ->
                log $"{name}: exactly-once: reading the applied offsets failed: {e.Message}"

                fail {
                    TopicPartition = ValueNone
                    Offset = ValueNone
                    Key = ValueNone
                    Stage = "exactly-once"
                    Error = e
                }

                Map.empty

    let onAssigned (parts: List<Confluent.Kafka.TopicPartition>) =
        intake.Flush()
        let resumes = resumeOf parts

        for p in parts do
            let tp = ours p
            let w = workerOf tp
            nextGeneration <- nextGeneration + 1
            // librdkafka may keep a partition's pause flag from an earlier assignment (seen after an
            // eager rebalance: the partitions paused before it never resumed), so the next
            // applyPauses pauses or resumes it explicitly (PauseKnown is false).
            let slot = Slot(w, p, nextGeneration)
            slots[tp] <- slot

            let skip =
                match Map.tryFind tp resumes with
                | Some r ->
                    let start = r.Start.Offset

                    if not start.IsSpecial then
                        slot.Floor <- start.Value

                    r.Skip
                | None when exactlyOnce.Enabled -> HashSet<int64>()
                | None -> null

            w.Post(Assign(nextGeneration, skip))

        counters.SetAssigned slots.Count
        assigned ()
        log $"""{name}: assigned {parts |> Seq.map string |> String.concat ", "}"""

        parts
        |> Seq.map (fun p ->
            match Map.tryFind (ours p) resumes with
            | Some r -> r.Start
            | None -> TopicPartitionOffset(p, Offset.Unset))
        |> List.ofSeq
        :> seq<_>

    let drop (revoked: Slot list) =
        for s in revoked do
            s.Worker.Post(Release s.Generation)
            slots.Remove(ours s.Kafka) |> ignore

        counters.SetAssigned slots.Count

    let slotsOf (parts: List<TopicPartitionOffset>) =
        parts
        |> Seq.choose (fun p ->
            match slots.TryGetValue(ours p.TopicPartition) with
            | true, s -> Some s
            | _ -> None)
        |> List.ofSeq

    let onRevoked (parts: List<TopicPartitionOffset>) =
        intake.Flush()
        let revoked = slotsOf parts

        if intake.Mode <> Closing && (currentFailure ()).IsNone then
            // Intake for them stops here (the consumer thread is in this handler); flush and drain.
            revoked
            |> List.map (fun s -> s.Worker.Drain(s.Generation, Revoked(ours s.Kafka)))
            |> Array.ofList
            |> waitAll "draining the revoked partitions"

            for s in revoked do
                store s

            commitSync revoked |> ignore

        drop revoked
        log $"""{name}: revoked {parts |> Seq.map (fun p -> string p.TopicPartition) |> String.concat ", "}"""

    /// An assignment served while the consumer closes (maybe on its own thread, see close): it is
    /// revoked again at once, so no loop is started for it.
    let onAssignedWhileClosing (parts: List<Confluent.Kafka.TopicPartition>) =
        log $"""{name}: assigned while closing {parts |> Seq.map string |> String.concat ", "} (ignored)"""
        parts |> Seq.map (fun p -> TopicPartitionOffset(p, Offset.Unset)) |> List.ofSeq :> seq<_>

    let onLost (parts: List<TopicPartitionOffset>) =
        intake.Flush()
        drop (slotsOf parts)

        log
            $"""{name}: lost {parts |> Seq.map (fun p -> string p.TopicPartition) |> String.concat ", "} (not committed)"""

    do
        let config = WorkflowOptions.consumerConfig options

        consumer <-
            ConsumerBuilder<byte[], byte[]>(config)
                .SetPartitionsAssignedHandler(
                    Func<
                        IConsumer<byte[], byte[]>,
                        List<Confluent.Kafka.TopicPartition>,
                        seq<TopicPartitionOffset>
                     >
                        (fun _ parts ->
                            if intake.Mode = Closing then
                                onAssignedWhileClosing parts
                            else
                                onAssigned parts)
                )
                .SetOffsetsCommittedHandler(fun _ committed ->
                    if exactlyOnce.Enabled then
                        exactlyOnce.Prune committed)
                .SetPartitionsRevokedHandler(
                    Action<IConsumer<byte[], byte[]>, List<TopicPartitionOffset>>(fun _ parts ->
                        onRevoked parts)
                )
                .SetPartitionsLostHandler(
                    Action<IConsumer<byte[], byte[]>, List<TopicPartitionOffset>>(fun _ parts -> onLost parts)
                )
                .SetErrorHandler(fun _ e ->
                    log $"{name}: Kafka error {e.Code}: {e.Reason}"

                    if e.IsFatal then
                        fail {
                            TopicPartition = ValueNone
                            Offset = ValueNone
                            Key = ValueNone
                            Stage = "consumer"
                            Error = KafkaException e
                        })
                .SetLogHandler(fun _ m ->
                    if m.Level <= SyslogLevel.Warning then
                        log $"{name}: librdkafka {m.Level} {m.Facility}: {m.Message}")
                .Build()

    /// Ends every partition loop, waiting for them at most `within`.
    let abandonWorkers (within: TimeSpan) =
        workers.Values
        |> Seq.map (fun w -> w.Abandon())
        |> Array.ofSeq
        |> waitWithin within "stopping the partition loops"

    /// Closes the consumer (it leaves its group) and disposes it, on a thread of its own: librdkafka's
    /// close has no timeout, and one caught in a cooperative rebalance on the embedded cluster was
    /// seen to hang (over 30 s, after its revoke callback ran). The consumer thread waits for it at
    /// most `within` (zero: not at all), then goes on; a close still running finishes in the
    /// background (the handlers do nothing in Closing mode but drop slots). The loops are then ended,
    /// waited for within what is left of `within`.
    let close (within: TimeSpan) =
        let within = max TimeSpan.Zero within
        let started = Stopwatch.StartNew()
        intake.Mode <- Closing

        let closing =
            Thread(
                (fun () ->
                    try
                        consumer.Close()
                    with e ->
                        log $"{name}: closing the consumer failed: {e.Message}"

                    try
                        consumer.Dispose()
                    with e ->
                        log $"{name}: disposing the consumer failed: {e.Message}"),
                IsBackground = true,
                Name = $"kflow-{name}-close"
            )

        closing.Start()

        if not (closing.Join within) then
            log $"{name}: closing the consumer did not finish within {within}; it goes on in the background"

        abandonWorkers (within - started.Elapsed)

    let gracefulStop (clock: Stopwatch) =
        intake.Mode <- Stopping
        intake.ApplyPauses()
        log $"{name}: stopping: flushing and draining {slots.Count} partitions"

        let drains =
            slots.Values
            |> Seq.map (fun s -> s.Worker.Drain(s.Generation, Flush))
            |> Array.ofSeq

        // The whole stop takes at most twice DrainTimeout: the drain at most one, and the commit (with
        // its retries during a rebalance), the close and the end of the loops share the rest.
        let deadline = clock.Elapsed + options.DrainTimeout
        let stopDeadline = deadline + options.DrainTimeout

        while not (drains |> Array.forall _.IsCompleted) && clock.Elapsed < deadline do
            // Polling keeps the member alive and runs rebalance handlers; messages are held.
            match
                (try
                    consumer.Consume 20
                 with :? ConsumeException as e ->
                     log $"{name}: consume error while stopping {e.Error.Code}: {e.Error.Reason}"
                     null)
            with
            | null -> ()
            | cr when cr.IsPartitionEOF -> ()
            | cr -> intake.Route cr

            intake.Flush()

        if not (drains |> Array.forall _.IsCompleted) then
            log
                $"{name}: the stop drain did not finish within {options.DrainTimeout}; committing what is finished"

        for s in slots.Values do
            store s

        // A commit refused during a rebalance (another member joining or leaving) is retried while
        // polling lets the rebalance finish, for at most DrainTimeout and not past the stop's deadline.
        let retryUntil = min (clock.Elapsed + options.DrainTimeout) stopDeadline
        let mutable committed = commitSync slots.Values

        while not committed && clock.Elapsed < retryUntil do
            match
                (try
                    consumer.Consume 100
                 with :? ConsumeException ->
                     null)
            with
            | null -> ()
            | cr when cr.IsPartitionEOF -> ()
            | cr -> intake.Route cr

            intake.Flush()
            intake.ApplyPauses()

            for s in slots.Values do
                store s

            committed <- commitSync slots.Values

        close (stopDeadline - clock.Elapsed)
        Outcome.Stopped

    let abort (report: FailureReport) =
        counters.Failed()
        intake.Flush()
        intake.Mode <- Closing
        abandonWorkers options.DrainTimeout

        for s in slots.Values do
            store s

        commitSync slots.Values |> ignore
        close options.DrainTimeout
        Outcome.Failed report

    /// One Consume call; a consume error is logged (and fails the incarnation if fatal), giving null.
    let consumeOnce (timeoutMs: int) =
        try
            consumer.Consume timeoutMs
        with :? ConsumeException as e ->
            log $"{name}: consume error {e.Error.Code}: {e.Error.Reason}"

            if e.Error.IsFatal then
                fail {
                    TopicPartition = ValueNone
                    Offset = ValueNone
                    Key = ValueNone
                    Stage = "consumer"
                    Error = e
                }

            null

    /// Most messages one burst takes from the consumer before they are handed on. 512.
    let burstMessages = 512

    let runLoop () =
        consumer.Subscribe options.Topics
        let clock = Stopwatch.StartNew()
        let tickMs = int64 options.TickInterval.TotalMilliseconds
        let mutable nextTick = tickMs
        let mutable nextStore = 0L
        let mutable nextRelieve = 0L
        let mutable nextStats = 0L
        let mutable outcome = None

        while outcome.IsNone do
            match currentFailure () with
            | Some report -> outcome <- Some(abort report)
            | None when stop.IsCancellationRequested -> outcome <- Some(gracefulStop clock)
            | None ->
                // A burst: the first Consume may wait; then what librdkafka already holds (up to
                // burstMessages, without waiting) is taken before the admitted messages are handed
                // to the loops, one Deliver per partition.
                let mutable taken = 0
                let mutable timeout = if intake.GlobalPaused then 10 else 100

                // Holding (the in-flight gate closed, partitions not paused yet): nothing is
                // consumed; the gate is checked again within a millisecond.
                if intake.Holding then
                    Thread.Sleep 1
                    nextRelieve <- 0L

                while taken < burstMessages && not intake.Holding do
                    match consumeOnce timeout with
                    | null -> taken <- burstMessages
                    | cr when cr.IsPartitionEOF -> taken <- taken + 1
                    | cr ->
                        intake.Route cr
                        taken <- taken + 1

                    timeout <- 0

                intake.Flush()

                let now = clock.ElapsedMilliseconds

                if now >= nextRelieve then
                    nextRelieve <- now + 5L
                    intake.Relieve now

                if now >= nextStore then
                    nextStore <- now + 50L

                    for s in slots.Values do
                        store s

                if now >= nextStats then
                    nextStats <- now + 250L
                    counters.SetPartitions [| for s in slots.Values -> Slot.stats consumer s |]

                if now >= nextTick then
                    nextTick <- now + tickMs

                    for s in slots.Values do
                        s.Worker.Post Clock

        outcome.Value

    /// Releases the consumer of an incarnation that was never started (a start check failed).
    member _.Discard() = consumer.Dispose()

    /// Runs the incarnation on a dedicated thread; the task gives how it ended.
    member _.Start() : Task<Outcome> =
        let ended =
            TaskCompletionSource<Outcome>(TaskCreationOptions.RunContinuationsAsynchronously)

        let body () =
            let outcome =
                try
                    runLoop ()
                with ex ->
                    let report = {
                        TopicPartition = ValueNone
                        Offset = ValueNone
                        Key = ValueNone
                        Stage = "runtime"
                        Error = ex
                    }

                    try
                        abort report
                    with _ ->
                        Outcome.Failed report

            ended.SetResult outcome

        let thread = Thread(ThreadStart body, IsBackground = true, Name = $"kflow-{name}")
        thread.Start()
        ended.Task
