// One incarnation of a workflow: one Confluent consumer driven by one dedicated thread, which polls,
// routes messages to the partition loops, applies backpressure, stores commit points and handles
// rebalances. A failure ends the incarnation; the workflow's supervisor decides what comes next.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open KFlow

/// How an incarnation ended.
[<NoEquality; NoComparison>]
type internal Outcome =
    /// StopAsync was called; the graceful stop ran.
    | Stopped
    /// A failure stopped it; the safe commit points were committed.
    | Failed of FailureReport

/// Where the consumer thread is in its life.
type internal Mode =
    | Running
    | Stopping
    | Closing

/// One assigned partition as the consumer thread sees it (consumer thread only).
[<Sealed; AllowNullLiteral>]
type internal Slot(worker: PartitionWorker, kafka: Confluent.Kafka.TopicPartition, generation: int) =
    member _.Worker = worker
    member _.Kafka = kafka
    member _.Generation = generation
    /// The last offset handed to the pipe in this assignment (-1: none).
    member val LastRouted = -1L with get, set
    /// Messages handed to the pipe in this assignment.
    member val Routed = 0L with get, set
    /// The offset stored last (-1: none).
    member val Stored = -1L with get, set
    /// The partition's own gate (MaxOpenOffsetsPerPartition) is closed.
    member val Closed = false with get, set
    /// The partition is paused in the consumer.
    member val KafkaPaused = false with get, set
    /// Whether KafkaPaused is known (false until the first applyPauses after the assignment).
    member val PauseKnown = false with get, set
    /// Progress of the partition while its own gate is closed.
    member val Stall = Stall.start 0L with get, set
    /// Messages returned by Consume while the partition's intake was closed, in offset order;
    /// handed on first when it reopens (librdkafka may return prefetched messages after a pause).
    member val Held = Queue<struct (ConsumeResult<byte[], byte[]> * int64)>()

    /// Messages of this assignment in flight.
    member this.Open =
        let p = worker.Published

        if p.Generation = generation then
            this.Routed - p.Finished
        else
            this.Routed

[<Sealed>]
type internal Incarnation
    (
        options: WorkflowOptions,
        newRun: unit -> PipeRun,
        counters: Counters,
        stop: CancellationToken,
        handling: FailureHandling,
        assigned: unit -> unit
    ) =
    let log = options.Log
    let name = options.Name
    let b = options.Backpressure

    let globalGate =
        Gate.create (int64 b.MaxInFlightMessages) b.MaxInFlightBytes b.ResumeAt

    let partitionGate =
        Gate.create (int64 b.MaxOpenOffsetsPerPartition) Int64.MaxValue b.ResumeAt

    let workers = Dictionary<KFlow.TopicPartition, PartitionWorker>()
    let slots = Dictionary<KFlow.TopicPartition, Slot>()
    let failureLock = obj ()
    let mutable failure: FailureReport option = None
    let mutable mode = Running
    let mutable globalClosed = false
    let mutable globalStall = Stall.start 0L
    let stallMs = int64 b.FlushWhenStalled.TotalMilliseconds
    let mutable nextGeneration = 0

    let fail (report: FailureReport) =
        lock failureLock (fun () ->
            if failure.IsNone then
                failure <- Some report)

    let currentFailure () = lock failureLock (fun () -> failure)

    let ours (t: Confluent.Kafka.TopicPartition) =
        KFlow.TopicPartition.create t.Topic t.Partition.Value

    let workerOf tp =
        match workers.TryGetValue tp with
        | true, w -> w
        | _ ->
            let w = PartitionWorker(tp, newRun, counters, log, fail, handling)
            workers[tp] <- w
            w

    // The consumer is created below; the handlers close over this cell.
    let mutable consumer: IConsumer<byte[], byte[]> = Unchecked.defaultof<_>

    let position (slot: Slot) =
        try
            let p = consumer.Position slot.Kafka

            if p.IsSpecial || p.Value < 0L then
                ValueNone
            else
                ValueSome p.Value
        with _ ->
            ValueNone

    let store (slot: Slot) =
        let p = slot.Worker.Published

        if p.Generation = slot.Generation then
            let lastRouted =
                if slot.LastRouted >= 0L then
                    ValueSome slot.LastRouted
                else
                    ValueNone

            let stored =
                if slot.Stored >= 0L then
                    ValueSome slot.Stored
                else
                    ValueNone

            // The position passes held messages, so it only counts when none is held.
            let position = if slot.Held.Count = 0 then position slot else ValueNone

            match CommitPlan.toStore p.CommitPoint lastRouted position stored with
            | ValueSome offset ->
                try
                    consumer.StoreOffset(TopicPartitionOffset(slot.Kafka, Offset offset))
                    slot.Stored <- offset
                with :? KafkaException as e ->
                    log $"{name}: storing offset {offset} of {slot.Kafka} failed: {e.Error.Reason}"
            | ValueNone -> ()

    let commitSync (slots: Slot seq) =
        let offsets =
            slots
            |> Seq.filter (fun s -> s.Stored >= 0L)
            |> Seq.map (fun s -> TopicPartitionOffset(s.Kafka, Offset s.Stored))
            |> List.ofSeq

        if offsets.IsEmpty then
            true
        else
            try
                consumer.Commit offsets
                counters.Committed()

                log
                    $"""{name}: committed {offsets
                                           |> List.map (fun o -> $"{o.TopicPartition}@{o.Offset.Value}")
                                           |> String.concat ", "}"""

                true
            with :? KafkaException as e ->
                log $"{name}: synchronous commit failed (at-least-once still holds): {e.Error.Reason}"
                false

    let applyPauses () =
        let pause = List<Confluent.Kafka.TopicPartition>()
        let resume = List<Confluent.Kafka.TopicPartition>()

        for slot in slots.Values do
            let wanted = mode <> Running || globalClosed || slot.Closed

            if wanted && (not slot.KafkaPaused || not slot.PauseKnown) then
                pause.Add slot.Kafka
            elif not wanted && (slot.KafkaPaused || not slot.PauseKnown) then
                resume.Add slot.Kafka

            slot.KafkaPaused <- wanted
            slot.PauseKnown <- true

        try
            if pause.Count > 0 then
                consumer.Pause pause

            if resume.Count > 0 then
                consumer.Resume resume

                // librdkafka's broker thread notices a resume only at its next wake-up, up to 1 s
                // later (measured here: intake cycles of exactly 1 s under a slow sink; the same
                // delay shows in confluent-kafka-go issue 630's debug log). A seek to the current
                // position wakes the fetcher now; it moves nothing (the position is the next
                // message to return, held ones are handed on first). Cycles fell to ~85 ms.
                for tp in resume do
                    let p = consumer.Position tp

                    if not p.IsSpecial then
                        consumer.Seek(TopicPartitionOffset(tp, p))
        with :? KafkaException as e ->
            log $"{name}: pause/resume failed: {e.Error.Reason}"

    let closeGlobal () =
        globalClosed <- true
        counters.Paused()
        log $"{name}: in-flight limit reached ({counters.InFlight}); pausing every partition"
        applyPauses ()

    let closePartition (slot: Slot) =
        slot.Closed <- true
        counters.PartitionPaused()
        log $"{name}: {slot.Kafka} has {slot.Open} open offsets; pausing it"
        applyPauses ()

    /// Hands a message to its partition's loop if intake is open and the gates admit it; closes
    /// the gate that refuses it.
    let admit (slot: Slot) (cr: ConsumeResult<byte[], byte[]>) (size: int64) =
        let load = counters.InFlight
        let pload = { Messages = slot.Open; Bytes = 0L }

        if mode <> Running || globalClosed || slot.Closed || (currentFailure ()).IsSome then
            false
        elif not (Gate.fits size load globalGate) then
            closeGlobal ()
            false
        elif not (Gate.fits 0L pload partitionGate) then
            closePartition slot
            false
        else
            counters.Routed size
            slot.Routed <- slot.Routed + 1L
            slot.LastRouted <- cr.Offset.Value
            slot.Worker.Post(Deliver(cr, size))

            if Gate.full (Gate.add size load) globalGate then
                closeGlobal ()

            if Gate.full (Gate.add 0L pload) partitionGate then
                closePartition slot

            true

    /// A message from Consume: handed on, or held (in order) until its partition's intake reopens.
    let route (cr: ConsumeResult<byte[], byte[]>) =
        match slots.TryGetValue(ours cr.TopicPartition) with
        | false, _ -> () // not assigned any more: its new owner reads it
        | true, slot ->
            let m = cr.Message

            let size =
                int64 (if isNull m.Key then 0 else m.Key.Length)
                + int64 (if isNull m.Value then 0 else m.Value.Length)

            if slot.Held.Count > 0 || not (admit slot cr size) then
                slot.Held.Enqueue(struct (cr, size))

    /// Flushes the pipes of the given partitions: their intake is closed and nothing finishes.
    let nudge (stalled: Slot seq) (what: string) =
        counters.StallFlushed()

        log
            $"{name}: {what} stalled for {options.Backpressure.FlushWhenStalled} with nothing finishing; flushing the buffers"

        for s in stalled do
            s.Worker.Post Nudge

    /// Reopens the gates whose load fell to the resume thresholds (flushing the pipes behind a gate
    /// that stalls), then hands on held messages.
    let relieve (now: int64) =
        if globalClosed && Gate.relieved counters.InFlight globalGate then
            globalClosed <- false
            counters.Resumed()
            log $"{name}: in-flight down to {counters.InFlight}; resuming"

        if globalClosed then
            let watch, stalled = Stall.watch now counters.InFlight.Messages stallMs globalStall
            globalStall <- watch

            if stalled then
                nudge slots.Values "intake"
        else
            globalStall <- Stall.start now

        for slot in slots.Values do
            if slot.Closed && Gate.relieved { Messages = slot.Open; Bytes = 0L } partitionGate then
                slot.Closed <- false

            if slot.Closed then
                let watch, stalled = Stall.watch now slot.Open stallMs slot.Stall
                slot.Stall <- watch

                if stalled then
                    nudge [ slot ] $"{slot.Kafka}"
            else
                slot.Stall <- Stall.start now

        applyPauses ()

        for slot in slots.Values do
            let mutable go = true

            while go && slot.Held.Count > 0 do
                let struct (cr, size) = slot.Held.Peek()

                if admit slot cr size then
                    slot.Held.Dequeue() |> ignore
                else
                    go <- false

    let waitAll (what: string) (tasks: Task[]) =
        let finished =
            try
                Task.WaitAll(tasks, options.DrainTimeout)
            with _ ->
                false

        if not finished then
            log
                $"{name}: {what} did not finish within the drain timeout ({options.DrainTimeout}); committing what is finished"

    let onAssigned (parts: List<Confluent.Kafka.TopicPartition>) =
        for p in parts do
            let tp = ours p
            let w = workerOf tp
            nextGeneration <- nextGeneration + 1
            // librdkafka may keep a partition's pause flag from an earlier assignment (seen after an
            // eager rebalance: the partitions paused before it never resumed), so the next
            // applyPauses pauses or resumes it explicitly (PauseKnown is false).
            slots[tp] <- Slot(w, p, nextGeneration)
            w.Post(Assign nextGeneration)

        counters.SetAssigned slots.Count
        assigned ()
        log $"""{name}: assigned {parts |> Seq.map string |> String.concat ", "}"""

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
        let revoked = slotsOf parts

        if mode <> Closing && (currentFailure ()).IsNone then
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

    let onLost (parts: List<TopicPartitionOffset>) =
        drop (slotsOf parts)

        log
            $"""{name}: lost {parts |> Seq.map (fun p -> string p.TopicPartition) |> String.concat ", "} (not committed)"""

    do
        let config = WorkflowOptions.consumerConfig options

        consumer <-
            ConsumerBuilder<byte[], byte[]>(config)
                .SetPartitionsAssignedHandler(
                    Action<IConsumer<byte[], byte[]>, List<Confluent.Kafka.TopicPartition>>(fun _ parts ->
                        onAssigned parts)
                )
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

    let abandonWorkers () =
        workers.Values
        |> Seq.map (fun w -> w.Abandon())
        |> Array.ofSeq
        |> waitAll "stopping the partition loops"

    let close () =
        mode <- Closing

        try
            consumer.Close()
        with e ->
            log $"{name}: closing the consumer failed: {e.Message}"

        abandonWorkers ()
        consumer.Dispose()

    let gracefulStop (clock: Stopwatch) =
        mode <- Stopping
        applyPauses ()
        log $"{name}: stopping: flushing and draining {slots.Count} partitions"

        let drains =
            slots.Values
            |> Seq.map (fun s -> s.Worker.Drain(s.Generation, Flush))
            |> Array.ofSeq

        let deadline = clock.Elapsed + options.DrainTimeout

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
            | cr -> route cr

        if not (drains |> Array.forall _.IsCompleted) then
            log
                $"{name}: the stop drain did not finish within {options.DrainTimeout}; committing what is finished"

        for s in slots.Values do
            store s

        // A commit refused during a rebalance (another member joining or leaving) is retried while
        // polling lets the rebalance finish, within a second drain timeout.
        let retryUntil = clock.Elapsed + options.DrainTimeout
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
            | cr -> route cr

            applyPauses ()

            for s in slots.Values do
                store s

            committed <- commitSync slots.Values

        close ()
        Stopped

    let abort (report: FailureReport) =
        counters.Failed()
        mode <- Closing
        abandonWorkers ()

        for s in slots.Values do
            store s

        commitSync slots.Values |> ignore
        close ()
        Failed report

    let runLoop () =
        consumer.Subscribe options.Topics
        let clock = Stopwatch.StartNew()
        let tickMs = int64 options.TickInterval.TotalMilliseconds
        let mutable nextTick = tickMs
        let mutable nextStore = 0L
        let mutable nextRelieve = 0L
        let mutable outcome = None

        while outcome.IsNone do
            match currentFailure () with
            | Some report -> outcome <- Some(abort report)
            | None when stop.IsCancellationRequested -> outcome <- Some(gracefulStop clock)
            | None ->
                let result =
                    try
                        consumer.Consume(if globalClosed then 10 else 100)
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

                match result with
                | null -> ()
                | cr when cr.IsPartitionEOF -> ()
                | cr -> route cr

                let now = clock.ElapsedMilliseconds

                if now >= nextRelieve then
                    nextRelieve <- now + 5L
                    relieve now

                if now >= nextStore then
                    nextStore <- now + 50L

                    for s in slots.Values do
                        store s

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
                        Failed report

            ended.SetResult outcome

        let thread = Thread(ThreadStart body, IsBackground = true, Name = $"kflow-{name}")
        thread.Start()
        ended.Task
