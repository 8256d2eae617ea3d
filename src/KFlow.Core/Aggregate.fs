// Aggregation: a user state machine turned into a stage that merges its inputs' tokens into its
// outputs, and the ready-made buffer (by count, bytes, age).
namespace KFlow

open System

/// A ready-made buffer's limits (Buffer.create), untyped: the aggregate stage batches by them itself
/// (see BatchState). 0 or None: no such limit.
[<NoEquality; NoComparison>]
type internal BatchLimits = {
    MaxCount: int
    MaxBytes: int64
    Size: obj -> int64
    MaxAge: TimeSpan option
}

/// What an aggregator runs: a user's state machine on its untyped state (Aggregator.create), or a
/// ready-made buffer's limits ('b is then 'a list), by which the aggregate stage batches itself.
[<NoEquality; NoComparison>]
type internal AggregatorSteps<'a, 'b> =
    | UserSteps of
        init: obj *
        add: (DateTimeOffset -> 'a -> obj -> struct (obj * 'b option)) *
        tick: (DateTimeOffset -> obj -> struct (obj * 'b option)) *
        flush: (obj -> 'b option)
    | Batching of BatchLimits

[<Sealed; NoEquality; NoComparison>]
type Aggregator<'a, 'b> internal (steps: AggregatorSteps<'a, 'b>) =
    member internal _.Steps = steps

/// The aggregate stage's state: the user's state, the first input held since the last output (its
/// key, position and timestamp go to the output; null when none is held: 8 bytes less per input than
/// a voption) and the held inputs' tokens, newest first. Tokens rather than envelopes are kept: one
/// list cell per input (bench --only pipe-core).
[<NoEquality; NoComparison>]
type internal AggregateState = {
    User: obj
    First: Envelope<obj>
    Tokens: Token list
} with

    /// Whether an input is held.
    member s.Holds = not (isNull (box s.First))

/// <summary>A ready-made buffer's state in the aggregate stage: the inputs held since the last output as
/// a chain, newest first, each state holding one input's value and tokens (that envelope's own list,
/// not copied), the count, size and arrival time of the batch so far, and the state before it. One
/// object per input where the user state's record and value cell, the aggregate's record and token
/// cell were four, and the batch's values and tokens are built oldest first by walking the chain,
/// with no reversed copy (bench --only pipe-core (c)).</summary>
[<Sealed; AllowNullLiteral>]
type internal BatchState
    (
        value: obj,
        first: Envelope<obj>,
        tokens: Token list,
        count: int,
        bytes: int64,
        since: DateTimeOffset,
        earlier: BatchState
    ) =
    /// The newest held input's value.
    member _.Value = value
    /// The oldest held input (its key, position and timestamp go to the output); null when none is held.
    member _.First = first
    /// The newest held input's tokens ([] when none is held).
    member _.Tokens = tokens
    /// How many inputs are held.
    member _.Count = count
    /// Their total size.
    member _.Bytes = bytes
    /// When the oldest held input arrived.
    member _.Since = since
    /// The state holding the inputs before this one (null: none).
    member _.Earlier = earlier

    /// Nothing held.
    static member val Empty =
        BatchState(null, Unchecked.defaultof<Envelope<obj>>, [], 0, 0L, DateTimeOffset.MinValue, null)

[<RequireQualifiedAccess>]
module Aggregator =
    let create
        (init: 's)
        (add: DateTimeOffset -> 'a -> 's -> 's * 'b option)
        (tick: DateTimeOffset -> 's -> 's * 'b option)
        (flush: 's -> 'b option)
        =
        // Struct results: the user's tuple is the only one built per input (bench --only pipe-core).
        let add' now a (s: obj) =
            let s', out = add now a (unbox<'s> s)
            struct (box s', out)

        let tick' now (s: obj) =
            let s', out = tick now (unbox<'s> s)
            struct (box s', out)

        Aggregator<'a, 'b>(UserSteps(box init, add', tick', (fun s -> flush (unbox<'s> s))))

    /// `tokens` (in order) put before `newestFirst`, newest first.
    let private holding (tokens: Token list) (newestFirst: Token list) =
        match tokens with
        | [ t ] -> t :: newestFirst
        | _ -> List.fold (fun acc t -> t :: acc) newestFirst tokens

    /// <summary>The stage of a ready-made buffer ('b is 'a list): it emits its batch, oldest value
    /// first, as soon as one limit is reached (on the message, or on the first tick once the oldest
    /// value is too old), and what it holds on Flush and Revoked.</summary>
    let private batchStage (limits: BatchLimits) : Stage<'a, 'b> =
        let empty = BatchState.Empty
        let none: Output<obj> = Output.none

        let old (now: DateTimeOffset) (s: BatchState) =
            s.Count > 0
            && (match limits.MaxAge with
                | Some age -> now - s.Since >= age
                | None -> false)

        let full (s: BatchState) =
            (limits.MaxCount > 0 && s.Count >= limits.MaxCount)
            || (limits.MaxBytes > 0L && s.Bytes >= limits.MaxBytes)

        // The batch, oldest value first, holding every held input's tokens (the one input's own list
        // when one is held).
        let batch (s: BatchState) : Output<obj> =
            let mutable values: 'a list = []
            let mutable tokens: Token list = []
            let mutable held = s

            while not (isNull held) do
                values <- unbox<'a> held.Value :: values

                match held.Tokens with
                | [ t ] -> tokens <- t :: tokens
                | ts -> tokens <- List.foldBack (fun t acc -> t :: acc) ts tokens

                held <- held.Earlier

            let first = s.First

            Output.emit {
                Value = box values
                Tokens = (if isNull s.Earlier then s.Tokens else tokens)
                Key = first.Key
                Position = first.Position
                Timestamp = first.Timestamp
            }

        let add now (e: Envelope<obj>) (state: obj) =
            let s = unbox<BatchState> state
            let size = limits.Size e.Value

            let held =
                if s.Count = 0 then
                    BatchState(e.Value, e, e.Tokens, 1, size, now, null)
                else
                    BatchState(e.Value, s.First, e.Tokens, s.Count + 1, s.Bytes + size, s.Since, s)

            if full held || old now held then
                struct (box empty, batch held)
            else
                struct (box held, none)

        let step =
            UntypedStep(fun now event state ->
                let s = unbox<BatchState> state

                match event with
                | Message e -> add now e state
                | Tick when old now s -> struct (box empty, batch s)
                | Flush
                | Revoked _ when s.Count > 0 -> struct (box empty, batch s)
                | _ -> struct (state, none))

        Stage<'a, 'b>("aggregate", box empty, step, ValueNone, ValueSome(MessageStep add))

    /// The stage of a user's aggregator.
    let private userStage
        init
        (add: DateTimeOffset -> 'a -> obj -> struct (obj * 'b option))
        tick
        flush
        : Stage<'a, 'b> =
        let empty user = {
            User = user
            First = Unchecked.defaultof<Envelope<obj>>
            Tokens = []
        }

        // Output.none is a generic value (a new record per use): one, built here.
        let none: Output<obj> = Output.none

        // What the held inputs become: one envelope holding all their tokens (the first one's key,
        // position and timestamp), or their tokens completed when there is no output.
        let release (s: AggregateState) (out: 'b option) : Output<obj> =
            match s.Holds, out with
            | false, _ -> none
            | true, Some b ->
                let first = s.First

                Output.emit {
                    Value = box b
                    Tokens = List.rev s.Tokens
                    Key = first.Key
                    Position = first.Position
                    Timestamp = first.Timestamp
                }
            | true, None -> {
                Emitted = []
                Effects = List.fold (fun acc t -> Complete t :: acc) [] s.Tokens
              }

        let addMessage now (e: Envelope<obj>) (state: obj) =
            let s = unbox<AggregateState> state
            let struct (user, out) = add now (unbox<'a> e.Value) s.User

            let held = {
                User = user
                First = (if s.Holds then s.First else e)
                Tokens = holding e.Tokens s.Tokens
            }

            match out with
            | Some _ -> struct (box (empty user), release held out)
            | None -> struct (box held, none)

        // Untyped (no Event or Output mapped per message), the same steps as a Stage.create would run.
        let step =
            UntypedStep(fun now event state ->
                let s = unbox<AggregateState> state

                match event with
                | Message e -> addMessage now e state
                | Tick ->
                    match tick now s.User with
                    | struct (user, (Some _ as out)) -> struct (box (empty user), release s out)
                    | struct (user, None) -> struct (box { s with User = user }, none)
                | Flush
                | Revoked _ -> struct (box (empty init), release s (flush s.User))
                | Assigned _ -> struct (state, none))

        Stage<'a, 'b>("aggregate", box (empty init), step, ValueNone, ValueSome(MessageStep addMessage))

    let stage (aggregator: Aggregator<'a, 'b>) : Stage<'a, 'b> =
        match aggregator.Steps with
        | UserSteps(init, add, tick, flush) -> userStage init add tick flush
        | Batching limits -> batchStage limits

[<NoEquality; NoComparison>]
type BufferOptions<'a> = {
    MaxCount: int option
    MaxBytes: int64 option
    Size: 'a -> int64
    MaxAge: TimeSpan option
}

[<RequireQualifiedAccess>]
module Buffer =
    let options<'a> : BufferOptions<'a> = {
        MaxCount = None
        MaxBytes = None
        Size = (fun (_: 'a) -> 1L)
        MaxAge = None
    }

    let create (options: BufferOptions<'a>) : Aggregator<'a, 'a list> =
        if options.MaxCount.IsNone && options.MaxBytes.IsNone && options.MaxAge.IsNone then
            invalidArgWith
                "options"
                "A buffer needs a limit: set MaxCount, MaxBytes or MaxAge in BufferOptions."

        match options.MaxCount with
        | Some n when n < 1 ->
            invalidArgWith "options" (sprintf "MaxCount must be ≥ 1 (got %d); set it in BufferOptions." n)
        | _ -> ()

        match options.MaxBytes with
        | Some n when n < 1L ->
            invalidArgWith "options" (sprintf "MaxBytes must be ≥ 1 (got %d); set it in BufferOptions." n)
        | _ -> ()

        match options.MaxAge with
        | Some t when t <= TimeSpan.Zero ->
            invalidArgWith "options" "MaxAge must be positive; set it in BufferOptions."
        | _ -> ()

        let limits: BatchLimits = {
            MaxCount = defaultArg options.MaxCount 0
            MaxBytes = defaultArg options.MaxBytes 0L
            Size = (fun (value: obj) -> options.Size(unbox<'a> value))
            MaxAge = options.MaxAge
        }

        Aggregator<'a, 'a list>(Batching limits)

    let count (count: int) =
        create { options with MaxCount = Some count }

    let bytes (size: 'a -> int64) (maxBytes: int64) =
        create {
            options with
                MaxBytes = Some maxBytes
                Size = size
        }

    let age (maxAge: TimeSpan) =
        create { options with MaxAge = Some maxAge }
