// The loop of one assigned partition: it owns the partition's PipeRun and Ledger (single owner, no
// locks), pushes delivered messages and ticks through the pipe, runs sink writes and async calls as
// tasks whose completions come back through its channel, and publishes its commit point.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Text
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open KFlow

/// What the consumer thread reads of a partition loop: its commit point for one assignment.
[<NoEquality; NoComparison>]
type internal Published = {
    /// The assignment (generation) the values belong to; -1 between assignments.
    Generation: int
    /// The ledger's commit point (ValueNone until the first message of the assignment).
    CommitPoint: int64 voption
    /// Messages of this assignment whose offset is finished.
    Finished: int64
}

/// A failure that stops the incarnation: where and what.
[<NoEquality; NoComparison>]
type internal FailureReport = {
    TopicPartition: KFlow.TopicPartition voption
    Offset: int64 voption
    /// The key of the failed message, when known.
    Key: string voption
    Stage: string
    Error: exn
}

[<NoEquality; NoComparison>]
type internal WorkerCommand =
    /// A new assignment of the partition starts.
    | Assign of generation: int
    /// A consumed message, with its key + value size.
    | Deliver of Confluent.Kafka.ConsumeResult<byte[], byte[]> * size: int64
    /// A sink write of an assignment ended (error None = success).
    | SinkDone of generation: int * request: SinkRequest * error: exn option
    /// An async call of an assignment ended.
    | CallDone of generation: int * callId: int * result: Result<obj, exn>
    /// The clock ticked.
    | Clock
    /// Intake stalled: flush the pipe's buffers now.
    | Nudge
    /// Push the event (Revoked or Flush), then wait until no write or call is in flight; then answer.
    | Drain of generation: int * event: Event<obj> * answer: TaskCompletionSource
    /// The assignment ends: drop the pipe's state and the ledger's partition.
    | Release of generation: int
    /// A dead-letter write of an assignment ended (error None = acknowledged): the token completes.
    | DeadLettered of generation: int * offset: int64 * token: Token * stage: string * error: exn option
    /// The incarnation ends: stop the loop.
    | Abandon

/// One unfinished offset: its open parts, its size, the message (for dead-lettering and failure
/// reports) and its token (ValueNone if the ledger refused the delivery).
[<Struct; NoEquality; NoComparison>]
type internal OpenEntry = {
    Parts: int
    Size: int64
    Message: Confluent.Kafka.ConsumeResult<byte[], byte[]>
    Token: Token voption
}

/// The loop of one partition for the life of an incarnation (across its assignments).
[<Sealed>]
type internal PartitionWorker
    (
        tp: KFlow.TopicPartition,
        newRun: unit -> PipeRun,
        counters: Counters,
        log: string -> unit,
        fail: FailureReport -> unit,
        handling: FailureHandling
    ) =
    let channel =
        Channel.CreateUnbounded<WorkerCommand>(UnboundedChannelOptions(SingleReader = true))

    let writer = channel.Writer

    // State owned by the loop.
    let mutable ledger = Ledger.empty
    let mutable ledgerAssigned = false
    let mutable run = newRun ()
    let mutable generation = -1
    let opened = Dictionary<int64, OpenEntry>()
    let lanes = Dictionary<string, Queue<SinkRequest>>()
    let readyCalls = Queue<struct (int * Result<obj, exn>)>()
    let mutable writesInFlight = 0
    let mutable callsInFlight = 0
    let mutable finished = 0L
    let mutable finishedDelta = 0L
    let mutable bytesDelta = 0L

    let mutable draining: (Event<obj> * ResizeArray<TaskCompletionSource>) voption =
        ValueNone

    let mutable movedWhileDraining = false

    let mutable published = {
        Generation = -1
        CommitPoint = ValueNone
        Finished = 0L
    }

    let keyAt (offset: int64 voption) =
        match offset with
        | ValueSome o ->
            match opened.TryGetValue o with
            | true, e when not (isNull e.Message) && not (isNull e.Message.Message.Key) ->
                ValueSome(Encoding.UTF8.GetString e.Message.Message.Key)
            | true, _ -> ValueSome ""
            | _ -> ValueNone
        | ValueNone -> ValueNone

    let report offset stage (error: exn) =
        log $"{tp}: stage '{stage}' failed at offset {offset}: {error.GetType().Name}: {error.Message}"

        fail {
            TopicPartition = ValueSome tp
            Offset = offset
            Key = keyAt offset
            Stage = stage
            Error = error
        }

    // The async nodes seen (their failures come after the retries in place).
    let callStages = HashSet<string>()

    let offsetDone (offset: int64) (entry: OpenEntry) =
        opened.Remove offset |> ignore
        finished <- finished + 1L
        finishedDelta <- finishedDelta + 1L
        bytesDelta <- bytesDelta + entry.Size

    let refused (error: LedgerError) =
        counters.Refused()
        log $"{tp}: the ledger refused a completion (ignored): %A{error}"

    let complete (token: Token) =
        match Ledger.complete token ledger with
        | Ok l ->
            ledger <- l
            let offset = token.Position.Offset

            match opened.TryGetValue offset with
            | true, e when e.Parts <= 1 -> offsetDone offset e
            | true, e -> opened[offset] <- { e with Parts = e.Parts - 1 }
            | _ -> ()
        | Error e -> refused e

    let fork (token: Token) (parts: int) =
        match Ledger.fork parts token ledger with
        | Ok l ->
            ledger <- l
            let offset = token.Position.Offset

            match opened.TryGetValue offset with
            | true, e when parts = 0 && e.Parts <= 1 -> offsetDone offset e
            | true, e -> opened[offset] <- { e with Parts = e.Parts - 1 + parts }
            | _ -> ()
        | Error e -> refused e

    let errorOf (t: Task) : exn =
        match t.Exception with
        | null -> TaskCanceledException(t) :> exn
        | agg when agg.InnerExceptions.Count = 1 -> agg.InnerExceptions[0]
        | agg -> agg :> exn

    let startWrite (request: SinkRequest) =
        try
            match request.Write request.Envelope.Value with
            | null -> Task.CompletedTask
            | t -> t
        with ex ->
            Task.FromException ex

    let writeEnded (request: SinkRequest) (error: exn option) =
        writesInFlight <- writesInFlight - 1

        match error with
        | None ->
            for t in request.Envelope.Tokens do
                complete t

            true
        | Some ex ->
            report (ValueSome request.Envelope.Position.Offset) request.Sink ex
            false

    /// The next write waiting in a lane, or ValueNone (and the lane is idle again).
    let nextInLane (lane: string) =
        match lanes.TryGetValue lane with
        | true, q when not (isNull q) && q.Count > 0 -> ValueSome(q.Dequeue())
        | true, _ ->
            lanes.Remove lane |> ignore
            ValueNone
        | _ -> ValueNone

    /// Runs writes of one lane in order, inline while they complete synchronously; an asynchronous
    /// one leaves the lane busy until its SinkDone arrives.
    let pump (lane: string) (first: SinkRequest) =
        let mutable current = first
        let mutable go = true

        while go do
            let t = startWrite current

            if t.IsCompleted then
                let ok =
                    writeEnded current (if t.IsCompletedSuccessfully then None else Some(errorOf t))

                match (if ok then nextInLane lane else ValueNone) with
                | ValueSome next -> current <- next
                | ValueNone -> go <- false
            else
                if not (lanes.ContainsKey lane) then
                    lanes[lane] <- null

                let gen = generation
                let request = current

                t.ContinueWith(
                    (fun (t: Task) ->
                        writer.TryWrite(
                            SinkDone(
                                gen,
                                request,
                                (if t.IsCompletedSuccessfully then None else Some(errorOf t))
                            )
                        )
                        |> ignore),
                    TaskContinuationOptions.ExecuteSynchronously
                )
                |> ignore

                go <- false

    /// The consumed messages of the given tokens that are still open (for dead-lettering).
    let originalsOf (tokens: Token list) =
        tokens
        |> List.map (fun t -> t.Position.Offset)
        |> List.distinct
        |> List.choose (fun o ->
            match opened.TryGetValue o with
            | true, e when not (isNull e.Message) -> Some e.Message
            | _ -> None)

    let guarded (request: SinkRequest) =
        FailureHandling.guardWrite handling $"{tp}: sink '{request.Sink}'" originalsOf request

    let enqueueWrite (request: SinkRequest) =
        let request = guarded request
        writesInFlight <- writesInFlight + 1
        let lane = request.Substream

        match lanes.TryGetValue lane with
        | true, q ->
            let q =
                if isNull q then
                    let q = Queue()
                    lanes[lane] <- q
                    q
                else
                    q

            q.Enqueue request
        | _ -> pump lane request

    let startCall (request: AsyncRequest) =
        callsInFlight <- callsInFlight + 1

        callStages.Add request.Stage |> ignore
        let policy = FailureHandling.policyOf request.Stage handling

        let t =
            FailureHandling.retrying
                handling
                $"{tp}: async map '{request.Stage}' at offset {request.Envelope.Position.Offset}"
                policy
                (fun () -> request.Run request.Envelope.Value)

        if t.IsCompleted then
            readyCalls.Enqueue(
                struct (request.Id,
                        (if t.IsCompletedSuccessfully then
                             Ok t.Result
                         else
                             Error(errorOf t)))
            )
        else
            let gen = generation

            t.ContinueWith(
                (fun (t: Task<obj>) ->
                    writer.TryWrite(
                        CallDone(
                            gen,
                            request.Id,
                            (if t.IsCompletedSuccessfully then
                                 Ok t.Result
                             else
                                 Error(errorOf t))
                        )
                    )
                    |> ignore),
                TaskContinuationOptions.ExecuteSynchronously
            )
            |> ignore

    /// A stage or async call failed (after its retries in place): dead-letter its message if the
    /// stage's policy says so, else report it (the supervisor restarts or halts).
    let stageFailed (f: StageFailure) =
        let offset =
            match f.Position with
            | ValueSome p -> ValueSome p.Offset
            | ValueNone -> ValueNone

        let entry =
            match offset with
            | ValueSome o ->
                match opened.TryGetValue o with
                | true, e when not (isNull e.Message) && e.Token.IsSome -> ValueSome e
                | _ -> ValueNone
            | ValueNone -> ValueNone

        let policy = FailureHandling.policyOf f.Stage handling

        match ErrorPolicy.terminal policy, handling.DeadLetters, entry with
        | DeadLetter topic, Some dlq, ValueSome e ->
            let attempts =
                if callStages.Contains f.Stage then
                    1 + ErrorPolicy.retries policy
                else
                    1

            let offset = e.Message.Offset.Value
            let token = e.Token.Value
            let gen = generation

            log
                $"{tp}: stage '{f.Stage}' failed at offset {offset}: {f.Error.GetType().Name}: {f.Error.Message}; dead-lettering it to '{topic}'"

            writesInFlight <- writesInFlight + 1

            let t =
                try
                    dlq.Write(topic, e.Message, f.Stage, f.Error, attempts)
                with ex ->
                    Task.FromException ex

            t.ContinueWith(
                (fun (t: Task) ->
                    writer.TryWrite(
                        DeadLettered(
                            gen,
                            offset,
                            token,
                            f.Stage,
                            (if t.IsCompletedSuccessfully then None else Some(errorOf t))
                        )
                    )
                    |> ignore),
                TaskContinuationOptions.ExecuteSynchronously
            )
            |> ignore
        | _ -> report offset f.Stage f.Error

    /// Applies what one push or resume produced, in the order PipeRun prescribes.
    let apply (effects: Effects) =
        for e in effects.Ledger do
            match e with
            | Complete t -> complete t
            | Fork(t, n) -> fork t n

        for o in effects.Outputs do
            for t in o.Tokens do
                complete t

        for f in effects.Failures do
            stageFailed f

        for s in effects.Sinks do
            enqueueWrite s

        for c in effects.Calls do
            startCall c

    let push (event: Event<obj>) =
        let run', effects = PipeRun.push DateTimeOffset.UtcNow event run
        run <- run'
        apply effects

    /// Resumes the async calls that have a result, oldest first.
    let resumeReady () =
        while readyCalls.Count > 0 do
            let struct (id, result) = readyCalls.Dequeue()
            callsInFlight <- callsInFlight - 1
            let run', effects = PipeRun.resume DateTimeOffset.UtcNow id result run
            run <- run'

            if draining.IsSome then
                movedWhileDraining <- true

            apply effects

    let publish () =
        Volatile.Write(
            &published,
            {
                Generation = generation
                CommitPoint =
                    (if ledgerAssigned then
                         Ledger.commitPoint tp ledger
                     else
                         ValueNone)
                Finished = finished
            }
        )

        if finishedDelta <> 0L || bytesDelta <> 0L then
            counters.Finished(finishedDelta, bytesDelta)
            finishedDelta <- 0L
            bytesDelta <- 0L

    /// Answers the drain once nothing is in flight; pushes the drain event again first if async
    /// results moved on after it (they may have refilled a buffer).
    let checkDrained () =
        let mutable again = true

        while again do
            again <- false

            match draining with
            | ValueSome(event, answers) when writesInFlight = 0 && callsInFlight = 0 && readyCalls.Count = 0 ->
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

    let deliver (cr: Confluent.Kafka.ConsumeResult<byte[], byte[]>) (size: int64) =
        let offset = cr.Offset.Value

        if not ledgerAssigned then
            ledger <- Ledger.assign tp offset ledger
            ledgerAssigned <- true

        let position = { TopicPartition = tp; Offset = offset }

        match Ledger.deliver position ledger with
        | Ok(struct (l, token)) ->
            ledger <- l

            opened[offset] <- {
                Parts = 1
                Size = size
                Message = cr
                Token = ValueSome token
            }

            let m = cr.Message

            let envelope: Envelope<obj> = {
                Value = box m.Value
                Tokens = [ token ]
                Key = (if isNull m.Key then "" else Encoding.UTF8.GetString m.Key)
                Position = position
                Timestamp = DateTimeOffset(let ts = m.Timestamp in ts.UtcDateTime)
            }

            push (Message envelope)
        | Error e ->
            // Kept in flight (never finished) so the commit point cannot pass it.
            opened[offset] <- {
                Parts = 1
                Size = size
                Message = cr
                Token = ValueNone
            }

            report
                (ValueSome offset)
                "ledger"
                (InvalidOperationException $"The ledger refused the delivery: %A{e}")

    let releaseState () =
        if ledgerAssigned then
            ledger <- Ledger.revoke tp ledger

        ledgerAssigned <- false
        run <- newRun ()
        lanes.Clear()
        readyCalls.Clear()
        writesInFlight <- 0
        callsInFlight <- 0

        for e in opened.Values do
            finishedDelta <- finishedDelta + 1L
            bytesDelta <- bytesDelta + e.Size

        opened.Clear()
        finished <- 0L

        match draining with
        | ValueSome(_, answers) ->
            draining <- ValueNone

            for a in answers do
                a.TrySetResult() |> ignore
        | ValueNone -> ()

    /// Handles one command; false ends the loop.
    let handle (command: WorkerCommand) =
        match command with
        | Deliver(cr, size) ->
            deliver cr size
            true
        | SinkDone(gen, request, error) ->
            if gen = generation then
                if writeEnded request error then
                    match nextInLane request.Substream with
                    | ValueSome next -> pump request.Substream next
                    | ValueNone -> ()
            else
                // A write of an earlier assignment: the ledger refuses its tokens (stale epoch).
                match error with
                | None ->
                    for t in request.Envelope.Tokens do
                        complete t
                | Some _ -> ()

            true
        | CallDone(gen, id, result) ->
            if gen = generation then
                readyCalls.Enqueue(struct (id, result))
            else
                counters.Refused()
                log $"{tp}: async call {id} of an earlier assignment ended; ignored."

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
        | Assign gen ->
            releaseState ()
            generation <- gen
            push (Assigned tp)
            true
        | Release gen ->
            if gen = generation then
                releaseState ()
                generation <- -1

            true
        | DeadLettered(gen, offset, token, stage, error) ->
            if gen = generation then
                writesInFlight <- writesInFlight - 1

                match error with
                | None ->
                    log $"{tp}: offset {offset} failed in '{stage}'; dead-lettered"
                    complete token
                | Some ex ->
                    log $"{tp}: the dead-letter write of offset {offset} failed: {ex.Message}"
                    report (ValueSome offset) stage ex

            true
        | Abandon -> false

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

                    while go && n < 1024 do
                        match reader.TryRead() with
                        | true, command ->
                            n <- n + 1
                            go <- handle command

                            if go then
                                resumeReady ()
                                checkDrained ()
                        | _ -> n <- Int32.MaxValue

                    if go then
                        publish ()
        with ex ->
            report ValueNone "runtime" ex
    }

    let completion = Task.Run<unit>(Func<Task<unit>>(loop))

    /// The partition.
    member _.TopicPartition = tp

    /// What the loop published last.
    member _.Published = Volatile.Read &published

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
