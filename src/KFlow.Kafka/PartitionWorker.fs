// The loop of one assigned partition: it owns the partition's PipeRun and open offsets (single
// owner, no locks), pushes delivered messages and ticks through the pipe, runs sink writes and async
// calls as tasks whose completions come back through its channel, and publishes its commit point.
namespace KFlow.Kafka

open System
open System.Diagnostics
open System.Collections.Concurrent
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open KFlow

/// The loop of one partition for the life of an incarnation (across its assignments).
[<Sealed>]
type internal PartitionWorker
    (
        tp: KFlow.TopicPartition,
        newRun: unit -> PipeRun,
        counters: Counters,
        log: string -> unit,
        fail: FailureReport -> unit,
        handling: FailureHandling,
        callGate: ConcurrencyGate,
        writeGate: ConcurrencyGate
    ) =
    let channel =
        Channel.CreateUnbounded<WorkerCommand>(UnboundedChannelOptions(SingleReader = true))

    let writer = channel.Writer

    // The list of the last batch of deliveries handled, emptied, for the consumer thread to fill
    // again (null once taken): a new list per batch cost ~16-37 bytes a message in bench (c).
    let mutable spare: ResizeArray<Consumed> = null
    // Messages posted in Deliver batches (written by the consumer thread) and handled by the loop
    // (written by the loop); the difference is the loop's queue.
    let mutable posted = 0L
    let mutable taken = 0L

    // Completions of sink writes (and of async calls, in callsEnded) skip the commands queued in the
    // channel: a burst of delivered messages would otherwise delay every completion (and the next call
    // of its substream) by the time the loop takes to push them all. Measured on bench (e): 3.5-5 ms from a call's
    // end to the next call of its key. `wakePending` is 1 while a Wake is in the channel.
    let completions = ConcurrentQueue<WorkerCommand>()
    let mutable wakePending = 0

    let postCompletion (command: WorkerCommand) =
        completions.Enqueue command

        if Interlocked.Exchange(&wakePending, 1) = 0 then
            writer.TryWrite Wake |> ignore

    // State owned by the loop.
    let offsets = OpenOffsets(tp, counters, log, handling.DeadLetters.IsSome)
    let keys = KeyCache()
    let mutable run = newRun ()
    let mutable generation = -1
    let mutable writesInFlight = 0
    // Exactly-once mode (set by Assign, null otherwise): offsets applied already, completed unread.
    let mutable skip: Collections.Generic.HashSet<int64> = null
    // Exactly-once mode: offsets a stage split into several values (never written; the incarnation fails).
    let split = Collections.Generic.HashSet<int64>()

    let mutable draining: (Event<obj> * ResizeArray<TaskCompletionSource>) voption =
        ValueNone

    let mutable movedWhileDraining = false

    let mutable published = {
        Generation = -1
        CommitPoint = ValueNone
        Finished = 0L
    }

    /// " (key 'k')" for an open offset's message, "" when unknown.
    let keyText offset =
        match offsets.KeyAt offset with
        | ValueSome k -> $" (key '{k}')"
        | ValueNone -> ""

    let report offset stage (error: exn) =
        let at =
            match offset with
            | ValueSome o -> $" at offset {o}"
            | ValueNone -> ""

        log $"{tp}: stage '{stage}' failed{at}{keyText offset}: {error.GetType().Name}: {error.Message}"

        fail {
            TopicPartition = ValueSome tp
            Offset = offset
            Key = offsets.KeyAt offset
            Stage = stage
            Error = error
        }

    /// "offset 5", or "offsets 3, 4, 5" (the first 8, then how many in all) for a failed input.
    let offsetsText (tokens: Token list) =
        match tokens |> List.map (fun t -> t.Position.Offset) |> List.distinct with
        | [ o ] -> $"offset {o}"
        | os when os.Length <= 8 -> "offsets " + String.Join(", ", os)
        | os -> "offsets " + String.Join(", ", List.truncate 8 os) + $", … ({os.Length} in all)"

    let writeEnded (request: SinkRequest) (error: exn option) =
        writesInFlight <- writesInFlight - 1

        match error with
        | None ->
            for t in request.Envelope.Tokens do
                offsets.Complete t

            true
        | Some ex ->
            report (ValueSome request.Envelope.Position.Offset) request.Sink ex
            false

    /// Posts `command error` to the loop once `t` has ended (error None when it succeeded).
    let whenEnded (t: Task) (command: exn option -> WorkerCommand) =
        t.ContinueWith(
            (fun (t: Task) ->
                postCompletion (
                    command (
                        if t.IsCompletedSuccessfully then
                            None
                        else
                            Some(taskError t)
                    )
                )),
            TaskContinuationOptions.ExecuteSynchronously
        )
        |> ignore

    let writePending (request: SinkRequest) (t: Task) =
        let gen = generation
        whenEnded t (fun error -> SinkDone(gen, request, error))

    // Cancelled when the assignment's state is released or the loop ends: calls and writes still
    // waiting for a slot of the workflow's gates are dropped without running (their completions
    // belong to an earlier assignment).
    let mutable waiting = new CancellationTokenSource()

    let dropWaiting () =
        let old = waiting
        waiting <- new CancellationTokenSource()
        old.Cancel()

    // Async calls that ended, queued by the thread that ended them (taken with the completions).
    let callsEnded = ConcurrentQueue<RunningCall>()

    let callEnded (call: RunningCall) =
        callsEnded.Enqueue call

        if Interlocked.Exchange(&wakePending, 1) = 0 then
            writer.TryWrite Wake |> ignore

    let calls =
        AsyncCalls(tp, handling, callGate, (fun () -> waiting.Token), (fun () -> generation), callEnded)

    // How each sink's writes are guarded and started (FailureHandling.sinkStarter), built once per
    // sink name on the loop when its first write is queued (read where a pipelined write starts).
    let sinks =
        ConcurrentDictionary<string, struct ((SinkRequest -> SinkRequest) * (SinkRequest -> Task))>()

    let sinkOf (name: string) =
        match sinks.TryGetValue name with
        | true, s -> s
        | _ ->
            let s =
                FailureHandling.sinkStarter
                    handling
                    (fun () -> $"{tp}: sink '{name}'")
                    offsets.DeadLetterable
                    name

            sinks.TryAdd(name, s) |> ignore
            s

    let guarded (request: SinkRequest) =
        let struct (guard, _) = sinkOf request.Sink
        guard request

    /// Starts a guarded write (timed while a listener records stage latency).
    let startWrite (request: SinkRequest) =
        let struct (_, start) = sinkOf request.Sink
        StageTiming.startWrite counters.Name start request

    let lanes = SinkLanes(writeEnded, writePending, startWrite)

    /// Each try of a write runs under the workflow's MaxConcurrentWrites.
    let gatedWrite (request: SinkRequest) =
        if writeGate.Limit = Int32.MaxValue then
            request
        else
            let write = request.Write
            let cancel = waiting.Token

            {
                request with
                    Write = fun value -> writeGate.RunWrite(cancel, (fun () -> write value))
            }

    let enqueueWrite (request: SinkRequest) =
        let request = gatedWrite request |> guarded
        writesInFlight <- writesInFlight + 1
        lanes.Enqueue request

    /// <summary>A stage or async call failed (after its retries in place): if the stage's policy
    /// dead-letters, every message its input stands for (a batch from an aggregate: all of them) is
    /// written to the dead-letter topic, and its tokens complete once every write is acknowledged
    /// (DeadLettered); else, or if one of them is not open any more, it is reported (the supervisor
    /// restarts or halts).</summary>
    let stageFailed (f: StageFailure) =
        let offset =
            match f.Position with
            | ValueSome p -> ValueSome p.Offset
            | ValueNone -> ValueNone

        let policy = FailureHandling.policyOf f.Stage handling

        match ErrorPolicy.terminal policy, handling.DeadLetters with
        | DeadLetter topic, Some dlq ->
            match offsets.DeadLetterable f.Tokens with
            | ValueSome originals ->
                let attempts =
                    if calls.IsStage f.Stage then
                        1 + ErrorPolicy.retries policy
                    else
                        1

                let gen = generation
                let tokens = f.Tokens

                log
                    $"{tp}: stage '{f.Stage}' failed at {offsetsText tokens}{keyText offset}: {f.Error.GetType().Name}: {f.Error.Message}; dead-lettering {originals.Length} message(s) to '{topic}'"

                writesInFlight <- writesInFlight + 1

                whenEnded
                    (FailureHandling.deadLetterAll dlq topic originals f.Stage f.Error attempts)
                    (fun error -> DeadLettered(gen, tokens, f.Stage, error))
            | ValueNone -> report offset f.Stage f.Error
        | _ -> report offset f.Stage f.Error

    /// Applies what one push or resume produced, in the order PipeRun prescribes.
    let apply (effects: Effects) =
        for e in effects.Ledger do
            match e with
            | Complete t -> offsets.Complete t
            | Fork(t, n) when n > 1 && not (isNull skip) ->
                // Exactly-once mode records a message's offset with the first value written for it,
                // so the other parts would be lost on a replay (ExactlyOnce.ofPipe refuses unfold). The
                // incarnation fails; no value holding the offset is written, so it stays open.
                split.Add t.Position.Offset |> ignore

                report
                    (ValueSome t.Position.Offset)
                    "exactly-once"
                    (InvalidOperationException
                        $"A stage split the message at offset {t.Position.Offset} into {n} values; exactly-once \
                          mode needs each message to reach its sink as one value (emit the parts as one list).")

                offsets.Fork(t, n)
            | Fork(t, n) -> offsets.Fork(t, n)

        for o in effects.Outputs do
            for t in o.Tokens do
                offsets.Complete t

        for f in effects.Failures do
            stageFailed f

        for s in effects.Sinks do
            if
                split.Count = 0
                || not (s.Envelope.Tokens |> List.exists (fun t -> split.Contains t.Position.Offset))
            then
                enqueueWrite s

        for c in effects.Calls do
            calls.Start(StageTiming.call counters.Name c)

    // The run is owned (newRun builds it with PipeRun.startOwnedWith): pushed in place, no new run
    // and no recorded write per push (pipe-core bench).
    let pushAt (now: DateTimeOffset) (event: Event<obj>) = apply (PipeRun.pushOwned now event run)

    let push (event: Event<obj>) = pushAt DateTimeOffset.UtcNow event

    /// Resumes the async calls that have a result, oldest first, with one clock reading (as a batch
    /// of delivered messages is pushed).
    let resumeReady () =
        if calls.HasReady then
            let now = DateTimeOffset.UtcNow

            while calls.HasReady do
                let struct (id, result) = calls.Take()
                let effects = PipeRun.resumeOwned now id result run

                if draining.IsSome then
                    movedWhileDraining <- true

                apply effects

    /// Publishes the commit point and finished count when one of them moved (a new record each
    /// time: a turn that finished nothing allocates nothing).
    let publish () =
        let last = published
        let point = offsets.CommitPoint

        let samePoint =
            match last.CommitPoint, point with
            | ValueSome a, ValueSome b -> a = b
            | ValueNone, ValueNone -> true
            | _ -> false

        if
            not samePoint
            || last.Generation <> generation
            || last.Finished <> offsets.Finished
        then
            Volatile.Write(
                &published,
                {
                    Generation = generation
                    CommitPoint = point
                    Finished = offsets.Finished
                }
            )

        offsets.ReportFinished()

    /// Answers the drain once nothing is in flight; pushes the drain event again first if async
    /// results moved on after it (they may have refilled a buffer).
    let checkDrained () =
        let mutable again = true

        while again do
            again <- false

            match draining with
            | ValueSome(event, answers) when writesInFlight = 0 && calls.InFlight = 0 && not calls.HasReady ->
                if movedWhileDraining then
                    movedWhileDraining <- false
                    push event
                    resumeReady ()
                    again <- true
                else
                    draining <- ValueNone
                    publish ()

                    for a in answers do
                        a.TrySetResult() |> ignore
            | _ -> ()

    /// Pushes one consumed message at `now` (the time its batch was taken).
    let deliver (now: DateTimeOffset) (cr: Confluent.Kafka.ConsumeResult<byte[], byte[]>) (size: int64) =
        let m = cr.Message
        let key = keys.Decode m.Key

        match offsets.Deliver(cr, key, size) with
        | Ok token when not (isNull skip) && skip.Remove cr.Offset.Value ->
            // Exactly-once mode: its effect is applied already; finished without running the pipe.
            offsets.Complete token
        | Ok token ->
            let envelope: Envelope<obj> = {
                Value = box m.Value
                Tokens = [ token ]
                Key = key
                // The token's: one Position per message, not two.
                Position = token.Position
                Timestamp = DateTimeOffset(let ts = m.Timestamp in ts.UtcDateTime)
            }

            apply (PipeRun.pushMessageOwned now envelope run)
        | Error e ->
            // Kept in flight (never finished) so the commit point cannot pass it.
            report
                (ValueSome cr.Offset.Value)
                "ledger"
                (InvalidOperationException $"The ledger refused the delivery: %A{e}")

    let releaseState () =
        run <- newRun ()
        split.Clear()
        lanes.Clear()
        calls.Clear()
        dropWaiting ()
        writesInFlight <- 0
        offsets.Release()

        match draining with
        | ValueSome(_, answers) ->
            draining <- ValueNone

            for a in answers do
                a.TrySetResult() |> ignore
        | ValueNone -> ()

    /// Handles one command; false ends the loop.
    let handle (command: WorkerCommand) =
        match command with
        | Deliver batch ->
            let now = DateTimeOffset.UtcNow

            for struct (cr, size) in batch do
                deliver now cr size

            Volatile.Write(&taken, taken + int64 batch.Count)
            // Handed back for the intake's next batch (TakeSpare).
            batch.Clear()
            Volatile.Write(&spare, batch)
            true
        | SinkDone(gen, request, error) ->
            if gen = generation then
                lanes.Ended(request, error)
            else
                // A write of an earlier assignment: the ledger refuses its tokens (stale epoch).
                match error with
                | None ->
                    for t in request.Envelope.Tokens do
                        offsets.Complete t
                | Some ex when AppliedOffsets.isFenced ex ->
                    // Exactly-once: the partition's new owner claimed it and applies these messages.
                    log
                        $"{tp}: sink '{request.Sink}': a write of an earlier assignment was fenced (the partition's new owner applies its messages); dropped"
                | Some _ -> ()

            true
        | Clock ->
            if generation >= 0 then
                push Tick

            true
        | Nudge ->
            if generation >= 0 then
                push Flush

            true
        | Drain(gen, event, answer) ->
            if gen <> generation then
                answer.TrySetResult() |> ignore
            else
                match draining with
                | ValueSome(_, answers) -> answers.Add answer
                | ValueNone -> draining <- ValueSome(event, ResizeArray [ answer ])

                push event

            true
        | Assign(gen, applied) ->
            releaseState ()
            generation <- gen
            skip <- applied
            push (Assigned tp)
            true
        | Release gen ->
            if gen = generation then
                releaseState ()
                generation <- -1

            true
        | DeadLettered(gen, tokens, stage, error) ->
            if gen = generation then
                writesInFlight <- writesInFlight - 1

                match error with
                | None ->
                    log $"{tp}: {offsetsText tokens} failed in '{stage}'; dead-lettered"

                    for _ in tokens |> List.distinctBy (fun t -> t.Position.Offset) do
                        counters.DeadLettered()

                    for t in tokens do
                        offsets.Complete t
                | Some ex ->
                    log $"{tp}: the dead-letter write of {offsetsText tokens} failed: {ex.Message}"

                    let offset =
                        match tokens with
                        | t :: _ -> ValueSome t.Position.Offset
                        | [] -> ValueNone

                    report offset stage ex

            true
        | Wake ->
            Volatile.Write(&wakePending, 0)
            true
        | Abandon ->
            dropWaiting ()
            false

    /// Most commands one turn of the loop handles before it yields its thread (a batch of delivered
    /// messages counts as one per message). 1,024.
    let batchCommands = 1024

    /// Longest turn of the loop before it yields its thread (checked every 64 commands). 1 ms.
    let batchTime = TimeSpan.FromMilliseconds 1.0

    /// How many commands a command counts for in a turn: a batch of deliveries one per message.
    let weight (command: WorkerCommand) =
        match command with
        | Deliver batch -> max 1 batch.Count
        | _ -> 1

    /// Settles an async call that ended: its result is queued for the pipe, unless it belongs to an
    /// earlier assignment (then it is ignored).
    let settleCall (call: RunningCall) =
        if call.Generation = generation then
            calls.Arrived(call.Id, call.Result)
        else
            counters.Refused()
            log $"{tp}: async call {call.Id} of an earlier assignment ended; ignored."

    let takeCompletions () =
        let mutable completion = Unchecked.defaultof<WorkerCommand>

        while completions.TryDequeue &completion do
            handle completion |> ignore

        let mutable call = Unchecked.defaultof<RunningCall>

        while callsEnded.TryDequeue &call do
            settleCall call

    let loop () = task {
        let reader = channel.Reader
        let mutable go = true

        try
            while go do
                let! more = reader.WaitToReadAsync()

                if not more then
                    go <- false
                else
                    let mutable n = 0
                    let mutable checkAt = 64
                    let started = Stopwatch.GetTimestamp()

                    while go && n < batchCommands do
                        // Completions first (a Wake's are taken after it reset the flag).
                        takeCompletions ()

                        match reader.TryRead() with
                        | true, command ->
                            n <- n + weight command
                            go <- handle command

                            if go then
                                takeCompletions ()

                            if n >= checkAt then
                                checkAt <- n + 64

                                if Stopwatch.GetElapsedTime started > batchTime then
                                    n <- batchCommands
                        | _ -> n <- Int32.MaxValue

                        if go then
                            resumeReady ()
                            checkDrained ()

                    if go then
                        publish ()

                        // WaitToReadAsync completes synchronously while commands wait, so a busy
                        // loop would keep its thread-pool thread for good: the timers completing
                        // async calls (queued to the pool) and the other partitions' loops then
                        // waited for the pool to inject threads. Measured on 2 cores (bench (e)): a
                        // 5 ms Task.Delay in the pipe took 15-18 ms on average (8 ms alone, see
                        // docs/benchmarks.md), 12-13 ms once the loop yields after a full batch.
                        if n <> Int32.MaxValue then
                            do! Task.Yield()
        with ex ->
            report ValueNone "runtime" ex
    }

    let completion = Task.Run<unit>(Func<Task<unit>>(loop))

    /// The partition.
    member _.TopicPartition = tp

    /// What the loop published last.
    member _.Published = Volatile.Read &published

    /// Messages delivered to the loop and not yet pushed into the pipe (the loop's queue).
    member _.Queued = Volatile.Read &posted - Volatile.Read &taken

    /// Queues a batch of consumed messages (consumer thread only).
    member _.Deliver(batch: ResizeArray<Consumed>) =
        Volatile.Write(&posted, posted + int64 batch.Count)
        writer.TryWrite(Deliver batch) |> ignore

    /// An empty list for the next Deliver: the one the loop handed back, or a new one of
    /// `capacity`. Consumer thread only.
    member _.TakeSpare(capacity: int) =
        match Interlocked.Exchange(&spare, null) with
        | null -> ResizeArray<Consumed>(capacity)
        | list -> list

    /// Queues a command (false once the loop ended).
    member _.Post(command: WorkerCommand) = writer.TryWrite command |> ignore

    /// Asks the loop to push `event` and wait for in-flight work; the task completes when it has.
    member _.Drain(generation: int, event: Event<obj>) =
        let answer =
            TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

        if not (writer.TryWrite(Drain(generation, event, answer))) then
            answer.TrySetResult() |> ignore

        answer.Task

    /// Ends the loop (nothing is flushed); the task completes when it has stopped.
    member _.Abandon() =
        writer.TryWrite Abandon |> ignore
        writer.TryComplete() |> ignore
        completion :> Task
