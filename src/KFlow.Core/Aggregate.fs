// Aggregation: a user state machine turned into a stage that merges its inputs' tokens into its
// outputs, and the ready-made buffer (by count, bytes, age).
namespace KFlow

open System

[<Sealed; NoEquality; NoComparison>]
type Aggregator<'a, 'b>
    internal
    (
        init: obj,
        add: DateTimeOffset -> 'a -> obj -> struct (obj * 'b option),
        tick: DateTimeOffset -> obj -> struct (obj * 'b option),
        flush: obj -> 'b option
    ) =
    member internal _.Init = init
    member internal _.Add = add
    member internal _.Tick = tick
    member internal _.Flush = flush

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

        Aggregator<'a, 'b>(box init, add', tick', (fun s -> flush (unbox<'s> s)))

    /// `tokens` (in order) put before `newestFirst`, newest first.
    let private holding (tokens: Token list) (newestFirst: Token list) =
        match tokens with
        | [ t ] -> t :: newestFirst
        | _ -> List.fold (fun acc t -> t :: acc) newestFirst tokens

    let stage (aggregator: Aggregator<'a, 'b>) : Stage<'a, 'b> =
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

        // Untyped (no Event or Output mapped per message), the same steps as a Stage.create would run.
        let step =
            UntypedStep(fun now event state ->
                let s = unbox<AggregateState> state

                match event with
                | Message e ->
                    let struct (user, out) = aggregator.Add now (unbox<'a> e.Value) s.User

                    let held = {
                        User = user
                        First = (if s.Holds then s.First else e)
                        Tokens = holding e.Tokens s.Tokens
                    }

                    match out with
                    | Some _ -> struct (box (empty user), release held out)
                    | None -> struct (box held, none)
                | Tick ->
                    match aggregator.Tick now s.User with
                    | struct (user, (Some _ as out)) -> struct (box (empty user), release s out)
                    | struct (user, None) -> struct (box { s with User = user }, none)
                | Flush
                | Revoked _ -> struct (box (empty aggregator.Init), release s (aggregator.Flush s.User))
                | Assigned _ -> struct (state, none))

        Stage<'a, 'b>("aggregate", box (empty aggregator.Init), step, ValueNone)

[<NoEquality; NoComparison>]
type BufferOptions<'a> = {
    MaxCount: int option
    MaxBytes: int64 option
    Size: 'a -> int64
    MaxAge: TimeSpan option
}

/// A buffer's state: values newest first, their count and size, and when the oldest arrived.
type internal BufferState<'a> = {
    Values: 'a list
    Count: int
    Bytes: int64
    Since: DateTimeOffset
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

        // Typed: left generic, `box empty` would box a BufferState<obj>.
        let empty: BufferState<'a> = {
            Values = []
            Count = 0
            Bytes = 0L
            Since = DateTimeOffset.MinValue
        }

        let old (now: DateTimeOffset) s =
            s.Count > 0
            && (match options.MaxAge with
                | Some age -> now - s.Since >= age
                | None -> false)

        let full s =
            (match options.MaxCount with
             | Some n -> s.Count >= n
             | None -> false)
            || (match options.MaxBytes with
                | Some n -> s.Bytes >= n
                | None -> false)

        // Steps on the untyped state with struct results, as Aggregator.create makes of a user's: no
        // tuple per value (bench --only pipe-core).
        let add now (value: 'a) (state: obj) : struct (obj * 'a list option) =
            let s = unbox<BufferState<'a>> state

            let s' = {
                Values = value :: s.Values
                Count = s.Count + 1
                Bytes = s.Bytes + options.Size value
                Since = (if s.Count = 0 then now else s.Since)
            }

            if full s' || old now s' then
                struct (box empty, Some(List.rev s'.Values))
            else
                struct (box s', None)

        let tick now (state: obj) : struct (obj * 'a list option) =
            let s = unbox<BufferState<'a>> state

            if old now s then
                struct (box empty, Some(List.rev s.Values))
            else
                struct (state, None)

        let flush (state: obj) =
            let s = unbox<BufferState<'a>> state
            if s.Count = 0 then None else Some(List.rev s.Values)

        Aggregator<'a, 'a list>(box empty, add, tick, flush)

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
