// What the partition loops need to apply the error policies: the policies, the dead-letter writer,
// a jitter source, and the retry-in-place runner that wraps a sink write or an async call.
namespace KFlow.Kafka

open System
open System.Threading.Tasks
open KFlow

/// The error policies of a running workflow and the means to apply them (shared by its incarnations).
[<NoEquality; NoComparison>]
type internal FailureHandling = {
    /// The policies (OnFailure and the overrides by stage).
    Policies: ErrorPolicies
    /// The dead-letter producer; None when no policy dead-letters.
    DeadLetters: DeadLetterWriter option
    /// Retries in place of a sink write before its policy (WorkflowOptions.SinkRetries).
    SinkRetries: int
    /// The backoff between them.
    SinkRetryBackoff: Backoff
    /// A random number in [0, 1) for the jitter (thread-safe).
    Draw: unit -> float
    /// The runtime's log.
    Log: string -> unit
    /// Counts a retry in place (WorkflowStats.Retries).
    Retried: unit -> unit
    /// Counts a dead-lettered message (WorkflowStats.DeadLettered).
    DeadLettered: unit -> unit
}

/// Applying the policies.
[<RequireQualifiedAccess>]
module internal FailureHandling =
    /// The policies of the options, a dead-letter writer if one is needed, Random.Shared for jitter;
    /// retries are counted in `counters`.
    let create (counters: Counters) (options: WorkflowOptions) =
        let policies = WorkflowOptions.policies options

        {
            Policies = policies
            DeadLetters =
                if ErrorPolicies.deadLetters policies then
                    Some(new DeadLetterWriter(options))
                else
                    None
            SinkRetries = options.SinkRetries
            SinkRetryBackoff = options.SinkRetryBackoff
            Draw = fun () -> Random.Shared.NextDouble()
            Log = options.Log
            Retried = counters.Retried
            DeadLettered = counters.DeadLettered
        }

    /// The policy of a stage.
    let policyOf (stage: string) (handling: FailureHandling) =
        ErrorPolicy.ofStage stage handling.Policies

    /// The policy of a sink: its stage policy with the default sink retries first (ErrorPolicy.forSink).
    let sinkPolicyOf (sink: string) (handling: FailureHandling) =
        ErrorPolicy.forSink handling.SinkRetries handling.SinkRetryBackoff (policyOf sink handling)

    let private attempt (run: unit -> Task<'T>) =
        try
            run ()
        with ex ->
            Task.FromException<'T> ex

    /// The task `run` returns, or a faulted one if it throws.
    let private started (run: unit -> Task) =
        try
            run ()
        with ex ->
            Task.FromException ex

    /// <summary>Waits for <paramref name="first"/> (the task of the first try of
    /// <paramref name="run"/>), retrying <paramref name="run"/> in place as the policy allows (waiting
    /// the backoff between tries); the task faults with the last error once the retries are spent, or
    /// at once when a write was fenced (AppliedOffsets.isFenced: trying it again is fenced again).
    /// <paramref name="what"/> names the attempt in the log, built only when a try fails.</summary>
    let private retryingAfter
        (handling: FailureHandling)
        (what: unit -> string)
        (policy: ErrorPolicy)
        (first: Task<'T>)
        (run: unit -> Task<'T>)
        : Task<'T> =
        task {
            let mutable current = first
            let mutable failures = 0
            let mutable result = Unchecked.defaultof<'T>
            let mutable error = None
            let mutable go = true

            while go do
                try
                    let! value = current
                    result <- value
                    go <- false
                with ex ->
                    failures <- failures + 1

                    match ErrorPolicy.retryDelay (handling.Draw()) failures policy with
                    | ValueSome delay when not (AppliedOffsets.isFenced ex) ->
                        handling.Log
                            $"{what ()} failed (try {failures}): {ex.GetType().Name}: {ex.Message}; retrying in place in {delay}"

                        do! Task.Delay delay
                        handling.Retried()
                        current <- attempt run
                    | _ ->
                        error <- Some ex
                        go <- false

            match error with
            | Some ex -> return raise ex
            | None -> return result
        }

    /// <summary>Runs <paramref name="run"/>, retrying it in place as the policy allows (waiting the
    /// backoff between tries); the task faults with the last error once the retries are spent, or at
    /// once when a write was fenced (AppliedOffsets.isFenced: trying it again is fenced again).
    /// Without retries it is just <c>run ()</c>. <paramref name="what"/> names the attempt in the
    /// log, built only when a try fails (it runs for every message).</summary>
    let retrying
        (handling: FailureHandling)
        (what: unit -> string)
        (policy: ErrorPolicy)
        (run: unit -> Task<'T>)
        : Task<'T> =
        let first = attempt run

        if ErrorPolicy.retries policy = 0 || first.IsCompletedSuccessfully then
            first
        else
            retryingAfter handling what policy first run

    /// <summary>One try of a write, <c>inner value</c>, as it is when it succeeds at once; else (it
    /// failed, threw, gave no task or runs on) it is awaited and retried in place as the policy
    /// allows. A write that succeeds at once allocates nothing here.</summary>
    let private retriedWrite
        (handling: FailureHandling)
        (what: unit -> string)
        (policy: ErrorPolicy)
        (request: SinkRequest)
        (inner: obj -> Task)
        (value: obj)
        : Task =
        let first =
            try
                inner value
            with ex ->
                Task.FromException ex

        if not (isNull first) && first.IsCompletedSuccessfully then
            first
        else
            // A null task takes the retrying path, whose await fails on it.
            let whatAt () =
                $"{what ()} at offset {request.Envelope.Position.Offset}"

            retryingAfter handling whatAt policy (task { do! first }) (fun () -> task { do! inner value })

    /// <summary>Dead-letters messages: produces each original to <paramref name="topic"/> with the
    /// failure headers, all at once and in order (the producer is idempotent, so they land in that
    /// order); the task completes once the broker acknowledged every one, and faults if any could not
    /// be written. Their offsets may be completed only then.</summary>
    let deadLetterAll
        (dlq: DeadLetterWriter)
        (topic: string)
        (originals: Confluent.Kafka.ConsumeResult<byte[], byte[]> list)
        (stage: string)
        (error: exn)
        (attempts: int)
        : Task =
        originals
        |> List.map (fun original -> started (fun () -> dlq.Write(topic, original, stage, error, attempts)))
        |> Task.WhenAll

    /// <summary>The guard of one sink's writes: a function giving each write request of the sink
    /// with the sink's policy applied (sinkPolicyOf, worked out once here rather than per message):
    /// retried in place, then, under DeadLetter, the original messages of its tokens
    /// (<paramref name="originalsOf"/>, called on the partition's loop when the request is guarded)
    /// are dead-lettered, so the write succeeds once the broker acknowledged every one of them. If
    /// not all of them are at hand (ValueNone), or the write was fenced (an exactly-once sink's
    /// partition claimed by another instance, which applies these messages itself), the write fails
    /// with its error instead (nothing is completed unwritten). Without retries or dead-lettering
    /// requests are returned as they are.
    /// <paramref name="what"/> names the sink in log lines (built on failure only).</summary>
    let sinkGuard
        (handling: FailureHandling)
        (what: unit -> string)
        (originalsOf: Token list -> Confluent.Kafka.ConsumeResult<byte[], byte[]> list voption)
        (sink: string)
        : SinkRequest -> SinkRequest =
        let policy = sinkPolicyOf sink handling

        match ErrorPolicy.terminal policy, handling.DeadLetters with
        | DeadLetter topic, Some dlq ->
            let attempts = 1 + ErrorPolicy.retries policy

            fun request ->
                let originals = originalsOf request.Envelope.Tokens

                let whatAt () =
                    $"{what ()} at offset {request.Envelope.Position.Offset}"

                let write (value: obj) : Task = task {
                    try
                        do! retrying handling whatAt policy (fun () -> task { do! request.Write value })
                    with ex ->
                        match originals with
                        | ValueSome originals when not (AppliedOffsets.isFenced ex) ->
                            do! deadLetterAll dlq topic originals request.Sink ex attempts

                            for _ in originals do
                                handling.DeadLettered()

                            handling.Log
                                $"{whatAt ()} failed {attempts} times ({ex.Message}); dead-lettered {originals.Length} message(s) to '{topic}'"
                        | _ -> return raise ex
                }

                { request with Write = write }
        | _ when ErrorPolicy.retries policy > 0 ->
            fun request -> {
                request with
                    Write = retriedWrite handling what policy request request.Write
            }
        | _ -> id

    /// <summary>How a partition loop runs one sink's writes, built once per sink: the guard it applies
    /// to each request when it is queued (on the loop), and how it starts a guarded request. Under
    /// DeadLetter the guard is <c>sinkGuard</c>'s (it takes the originals on the loop) and a request
    /// starts as it is. With retries in place only, nothing is wrapped per request: a request starts
    /// with its first try as it is, and only a write that fails or runs on builds the retry state
    /// machine (sinkGuard copied every request with a wrapped write, ~100 bytes a message). Without
    /// either, a request starts as it is.</summary>
    let sinkStarter
        (handling: FailureHandling)
        (what: unit -> string)
        (originalsOf: Token list -> Confluent.Kafka.ConsumeResult<byte[], byte[]> list voption)
        (sink: string)
        : struct ((SinkRequest -> SinkRequest) * (SinkRequest -> Task)) =
        let policy = sinkPolicyOf sink handling
        let plain (request: SinkRequest) = request.Write request.Envelope.Value

        match ErrorPolicy.terminal policy, handling.DeadLetters with
        | DeadLetter _, Some _ -> struct (sinkGuard handling what originalsOf sink, plain)
        | _ when ErrorPolicy.retries policy > 0 ->
            struct (id,
                    fun request ->
                        retriedWrite handling what policy request request.Write request.Envelope.Value)
        | _ -> struct (id, plain)

    /// <summary>One sink write request with its sink's policy applied, as <c>sinkGuard</c> gives it
    /// (the guard is built for this request alone; the partition loops keep one per sink).</summary>
    let guardWrite
        (handling: FailureHandling)
        (what: unit -> string)
        (originalsOf: Token list -> Confluent.Kafka.ConsumeResult<byte[], byte[]> list voption)
        (request: SinkRequest)
        =
        sinkGuard handling what originalsOf request.Sink request
