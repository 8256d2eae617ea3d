// The consumer thread's intake: it routes consumed messages to the partition loops in batches through
// two gates (in flight per workflow, open offsets per partition), holds then pauses and resumes with
// hysteresis, holds messages consumed while closed, and flushes pipes behind a gate that stalls.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Diagnostics
open Confluent.Kafka

/// Where the consumer thread is in its life.
type internal Mode =
    | Running
    | Stopping
    | Closing

/// The intake of one incarnation (consumer thread only). `consumer` gives the incarnation's
/// consumer; `failed` tells whether a failure was reported (intake stops).
[<Sealed>]
type internal Intake
    (
        options: WorkflowOptions,
        counters: Counters,
        slots: Dictionary<KFlow.TopicPartition, Slot>,
        consumer: unit -> IConsumer<byte[], byte[]>,
        failed: unit -> bool
    ) =
    let log = options.Log
    let name = options.Name
    let b = options.Backpressure

    let globalGate =
        Gate.create (int64 b.MaxInFlightMessages) b.MaxInFlightBytes b.ResumeAt

    let partitionGate =
        Gate.create (int64 b.MaxOpenOffsetsPerPartition) Int64.MaxValue b.ResumeAt

    // The slot of the last routed message (Route), null when forgotten.
    let mutable lastSlot: Slot = null
    let mutable lastTopic = ""
    let mutable lastPartition = -1
    let mutable mode = Running
    let mutable globalClosed = false
    // The in-flight gate is closed and every partition is paused in the consumer (after the hold).
    let mutable globalPaused = false
    // When the in-flight gate closed (Stopwatch timestamp).
    let mutable closedAt = 0L
    let mutable globalStall = Stall.start 0L
    // The queue gate (messages handed to the loops and not yet pushed into their pipes): it closes
    // at MaxQueuedMessages and reopens at half of it.
    let queueGate = Gate.create (int64 b.MaxQueuedMessages) Int64.MaxValue 0.5

    let mutable queueClosed = false
    // The queue gate is closed and every partition is paused in the consumer (after the hold).
    let mutable queuePaused = false
    let mutable queueClosedAt = 0L
    let stallMs = int64 b.FlushWhenStalled.TotalMilliseconds

    /// <summary>How long intake holds (stops calling Consume) once the in-flight gate closes before
    /// it pauses every partition. 500 ms. A resume seeks to wake the fetcher (see applyPauses), which
    /// drops what librdkafka prefetched, and the fetches start over: on the embedded cluster a fast
    /// pipe hitting MaxInFlightMessages paused and resumed several times per 500,000 messages, each
    /// time idling while its partitions were fetched again. A short hold lets the loops catch up from
    /// the messages in flight while librdkafka's queue (bounded by queued.max.messages.kbytes) stays
    /// as it is. Rebalance callbacks, served by Consume, wait at most this long.</summary>
    let holdBeforePause = TimeSpan.FromMilliseconds 500.0

    let applyPauses () =
        let consumer = consumer ()
        let pause = List<Confluent.Kafka.TopicPartition>()
        let resume = List<Confluent.Kafka.TopicPartition>()

        for slot in slots.Values do
            let wanted = mode <> Running || globalPaused || queuePaused || slot.Closed

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

    // The in-flight gate closes: intake stops taking messages (the consumer thread stops calling
    // Consume, librdkafka keeps what it prefetched, within its own queue limits); the partitions are
    // paused only if the gate is still closed after holdBeforePause.
    let closeGlobal () =
        globalClosed <- true
        closedAt <- Stopwatch.GetTimestamp()
        counters.Paused()
        log $"{name}: in-flight limit reached ({counters.InFlight}); holding intake"

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

        if mode <> Running || globalClosed || queueClosed || slot.Closed || failed () then
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
            slot.Pending.Add(struct (cr, size))

            if Gate.full (Gate.add size load) globalGate then
                closeGlobal ()

            if Gate.full (Gate.add 0L pload) partitionGate then
                closePartition slot

            true

    /// Flushes the pipes of the given partitions: their intake is closed and nothing finishes.
    let nudge (stalled: Slot seq) (what: string) =
        counters.StallFlushed()

        log
            $"{name}: {what} stalled for {options.Backpressure.FlushWhenStalled} with nothing finishing; flushing the buffers"

        for s in stalled do
            s.Worker.Post Nudge

    /// The messages the loops hold, handed to them and not yet pushed into their pipes.
    let queuedInLoops () =
        let mutable queued = 0L

        for slot in slots.Values do
            queued <- queued + slot.Worker.Queued

        { Messages = queued; Bytes = 0L }

    /// Hands each slot's admitted messages to its loop as one Deliver. Called before every Consume
    /// call (and at the start of the rebalance handlers, which Consume runs), so that no admitted
    /// message waits behind a command posted later (Drain, Release, Clock).
    let flush () =
        lastSlot <- null

        for slot in slots.Values do
            let pending = slot.Pending

            if pending.Count > 0 then
                slot.Worker.Deliver pending
                slot.Pending <- slot.Worker.TakeSpare pending.Count

        if not queueClosed && Gate.full (queuedInLoops ()) queueGate then
            queueClosed <- true
            queueClosedAt <- Stopwatch.GetTimestamp()
            counters.QueueHeld()

    /// Where the consumer thread is in its life; intake is open only while Running.
    member _.Mode
        with get () = mode
        and set value = mode <- value

    /// Whether every partition is paused for the workflow's in-flight gate or its queue gate.
    member _.GlobalPaused = globalPaused || queuePaused

    /// Whether intake holds: the in-flight or the queue gate is closed but the partitions are not
    /// paused yet; the consumer thread does not call Consume meanwhile (at most holdBeforePause).
    member _.Holding =
        (globalClosed && not globalPaused) || (queueClosed && not queuePaused)

    /// Pauses or resumes each partition in the consumer as the mode and the gates want it.
    member _.ApplyPauses() = applyPauses ()

    /// Hands the messages admitted since the last flush to their partitions' loops.
    member _.Flush() = flush ()

    /// A message from Consume: admitted (handed on at the next Flush), or held (in order) until its
    /// partition's intake reopens.
    member _.Route(cr: ConsumeResult<byte[], byte[]>) =
        // cr.TopicPartitionOffset would build a new object per message.
        let topic = cr.Topic
        let partition = cr.Partition.Value

        // Consume returns runs of one partition's messages: the last slot found serves the next
        // message of the same partition without a lookup (forgotten at every Flush, which the
        // rebalance handlers call before they change the slots).
        let slot =
            if
                not (isNull lastSlot)
                && lastPartition = partition
                && String.Equals(lastTopic, topic)
            then
                lastSlot
            else
                match slots.TryGetValue(KFlow.TopicPartition.create topic partition) with
                | true, slot ->
                    lastSlot <- slot
                    lastTopic <- topic
                    lastPartition <- partition
                    slot
                | _ -> null

        match slot with
        | null -> () // not assigned any more: its new owner reads it
        | slot ->
            let m = cr.Message

            let size =
                int64 (if isNull m.Key then 0 else m.Key.Length)
                + int64 (if isNull m.Value then 0 else m.Value.Length)

            if slot.Held.Count > 0 || not (admit slot cr size) then
                slot.Held.Enqueue(struct (cr, size))

    /// Reopens the gates whose load fell to the resume thresholds (flushing the pipes behind a gate
    /// that stalls), then hands on held messages.
    member _.Relieve(now: int64) =
        if globalClosed && Gate.relieved counters.InFlight globalGate then
            globalClosed <- false
            globalPaused <- false
            counters.Resumed()
            log $"{name}: in-flight down to {counters.InFlight}; resuming"
        elif
            globalClosed
            && not globalPaused
            && Stopwatch.GetElapsedTime closedAt >= holdBeforePause
        then
            globalPaused <- true

            log
                $"{name}: in-flight still at {counters.InFlight} after {holdBeforePause}; pausing every partition"

        if queueClosed then
            let queued = queuedInLoops ()

            if Gate.relieved queued queueGate then
                queueClosed <- false
                queuePaused <- false
            elif not queuePaused && Stopwatch.GetElapsedTime queueClosedAt >= holdBeforePause then
                queuePaused <- true

                log
                    $"{name}: {queued.Messages} messages still wait for their partition loops after {holdBeforePause}; pausing every partition"

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

        flush ()
