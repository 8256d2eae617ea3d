// The queue of one async node instance (calls in input order, inputs waiting for a slot, broadcast
// events held behind them) as a persistent two-list queue with counts, so that a push or a resume
// costs O(1) amortised instead of O(queue length): a demux substream can hold thousands of inputs.
namespace KFlow

/// One entry of an async node's queue, in input order.
[<NoEquality; NoComparison>]
type internal AsyncEntry =
    /// A started call, with its result once known.
    | Started of id: int * input: Envelope<obj> * result: Result<obj, exn> option
    /// An input waiting for a free slot.
    | Queued of Envelope<obj>
    /// A broadcast event (its hold id) waiting for the entries before it to go on.
    | Held of hold: int * event: Event<obj>

/// An async node's entries in input order: the oldest in Front, the newest in Back (newest first),
/// with the number of entries, of Started entries and of Queued entries. Immutable.
/// Started entries always come before Queued ones (an input starts only when none waits before
/// it, and waiting inputs start in order), so the calls sit at the front.
[<NoEquality; NoComparison>]
type internal AsyncQueue = private {
    Front: AsyncEntry list
    Back: AsyncEntry list
    Length: int
    Started: int
    Queued: int
}

/// Functions over AsyncQueue. Measured on one substream holding 160 inputs (bench/KFlow.Bench's
/// async demux): a push + resume took 158 µs with a plain list, against a few µs now.
[<RequireQualifiedAccess>]
module internal AsyncQueue =
    /// No entry.
    let empty = {
        Front = []
        Back = []
        Length = 0
        Started = 0
        Queued = 0
    }

    /// Whether the queue holds no entry.
    let isEmpty (q: AsyncQueue) = q.Length = 0

    /// How many calls are started (answered or not, until they go on).
    let started (q: AsyncQueue) = q.Started

    let private counts entry =
        match entry with
        | Started _ -> struct (1, 0)
        | Queued _ -> struct (0, 1)
        | Held _ -> struct (0, 0)

    /// The queue with an entry added at the end.
    let enqueue (entry: AsyncEntry) (q: AsyncQueue) =
        let struct (s, w) = counts entry

        {
            q with
                Back = entry :: q.Back
                Length = q.Length + 1
                Started = q.Started + s
                Queued = q.Queued + w
        }

    /// The entries, oldest first.
    let toList (q: AsyncQueue) =
        if q.Back.IsEmpty then
            q.Front
        else
            q.Front @ List.rev q.Back

    /// A queue of the given entries, oldest first.
    let ofList (entries: AsyncEntry list) =
        let mutable s = 0
        let mutable w = 0

        for e in entries do
            let struct (s', w') = counts e
            s <- s + s'
            w <- w + w'

        {
            Front = entries
            Back = []
            Length = entries.Length
            Started = s
            Queued = w
        }

    /// Whether a new input can start its call now: a slot is free and no input waits before it.
    let canStart parallelism (q: AsyncQueue) = q.Started < parallelism && q.Queued = 0

    /// Replaces the first entry of `front` that `change` maps to Some; None if none does.
    let private replaceFirst (change: AsyncEntry -> AsyncEntry option) (front: AsyncEntry list) =
        let rec go before rest =
            match rest with
            | [] -> None
            | e :: rest ->
                match change e with
                | Some e' -> Some(List.rev before @ (e' :: rest))
                | None -> go (e :: before) rest

        go [] front

    /// The queue with call `id`'s result recorded (unchanged if the call is not in it).
    let withResult id result (q: AsyncQueue) =
        match q.Front with
        // The oldest call answers first (parallelism 1, or calls of equal length).
        | Started(c, e, None) :: rest when c = id -> {
            q with
                Front = Started(c, e, Some result) :: rest
          }
        | _ ->
            let change entry =
                match entry with
                | Started(c, e, None) when c = id -> Some(Started(c, e, Some result))
                | _ -> None

            match replaceFirst change q.Front with
            | Some front -> { q with Front = front }
            | None when q.Back.IsEmpty -> q
            | None ->
                match replaceFirst change (toList q) with
                | Some front -> { q with Front = front; Back = [] }
                | None -> q

    /// <summary>Call `id`'s result when the call is the oldest entry (parallelism 1, or calls answering
    /// in order): its input and the queue without it. ValueNone when another entry is older (then
    /// withResult and ready).</summary>
    /// <remarks>One queue built per answer instead of four objects and three list cells (bench
    /// --only pipe-core, async demux).</remarks>
    let answerOldest id (q: AsyncQueue) =
        let without front back =
            if q.Length = 1 then
                empty
            else
                {
                    Front = front
                    Back = back
                    Length = q.Length - 1
                    Started = q.Started - 1
                    Queued = q.Queued
                }

        match q.Front with
        | Started(c, e, None) :: rest when c = id -> ValueSome(struct (e, without rest q.Back))
        | [] ->
            match q.Back with
            | [ Started(c, e, None) ] when c = id -> ValueSome(struct (e, without [] []))
            | [] -> ValueNone
            | back ->
                match List.rev back with
                | Started(c, e, None) :: rest when c = id -> ValueSome(struct (e, without rest []))
                | _ -> ValueNone
        | _ -> ValueNone

    let private going entry =
        match entry with
        | Started(_, _, Some _)
        | Held _ -> true
        | _ -> false

    /// The entries that can go on now (answered calls at the head, in input order, and the events
    /// held behind them), and the rest of the queue.
    let ready (q: AsyncQueue) =
        let rec take acc (front: AsyncEntry list) =
            match front with
            | e :: rest when going e -> take (e :: acc) rest
            | _ -> struct (acc, front)

        let struct (taken, front) = take [] q.Front

        let struct (taken, front, back) =
            if front.IsEmpty && not q.Back.IsEmpty then
                let struct (taken, front) = take taken (List.rev q.Back)
                struct (taken, front, [])
            else
                struct (taken, front, q.Back)

        match taken with
        | [] -> [], q
        | _ ->
            let ready =
                match taken with
                | [ _ ] -> taken
                | _ -> List.rev taken

            let started =
                ready
                |> List.sumBy (function
                    | Started _ -> 1
                    | _ -> 0)

            ready,
            {
                Front = front
                Back = back
                Length = q.Length - ready.Length
                Started = q.Started - started
                Queued = q.Queued
            }

    /// How many inputs wait for a free slot.
    let waiting (q: AsyncQueue) = q.Queued

    /// Starts waiting inputs, in order, in the slots free under `parallelism`.
    let startWaiting parallelism (start: Envelope<obj> -> AsyncEntry) (q: AsyncQueue) =
        let free = parallelism - q.Started

        if free <= 0 || q.Queued = 0 then
            q
        else
            // Walks the entries oldest first until `free` inputs started or none waits any more.
            let rec go free waiting before (rest: AsyncEntry list) back =
                if free = 0 || waiting = 0 then
                    struct (List.rev before @ rest, back, waiting)
                else
                    match rest with
                    | [] when List.isEmpty back -> struct (List.rev before, [], waiting)
                    | [] -> go free waiting before (List.rev back) []
                    | Queued env :: rest -> go (free - 1) (waiting - 1) (start env :: before) rest back
                    | e :: rest -> go free waiting (e :: before) rest back

            let struct (front, back, waiting) = go free q.Queued [] q.Front q.Back
            let begun = q.Queued - waiting

            {
                q with
                    Front = front
                    Back = back
                    Started = q.Started + begun
                    Queued = waiting
            }

    /// Whether a broadcast event must stay behind an entry of an async node's queue: a Flush behind
    /// every entry, a Revoked behind the inputs of its partition; Flush, Revoked and Assigned behind an
    /// event held before them (events keep their order). A Tick is never held.
    let mustFollow (event: Event<obj>) entry =
        match entry, event with
        | Held _, (Flush | Revoked _ | Assigned _) -> true
        | (Started(_, env, _) | Queued env), Flush -> true
        | (Started(_, env, _) | Queued env), Revoked tp ->
            env.Tokens |> List.exists (fun t -> t.Position.TopicPartition = tp)
        | _ -> false

    /// The queue with the event held after the last entry it must follow; None if it passes now.
    let holdIn hold event (q: AsyncQueue) =
        match event with
        | _ when isEmpty q -> None
        | Tick -> None
        // Every entry must be followed by a Flush: it goes last.
        | Flush -> Some(enqueue (Held(hold, event)) q)
        | _ ->
            let entries = toList q

            List.tryFindIndexBack (mustFollow event) entries
            |> Option.map (fun j -> ofList (List.insertAt (j + 1) (Held(hold, event)) entries))
