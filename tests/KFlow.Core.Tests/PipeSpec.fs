// Generated pipes for the pipe properties: the stage set as data, a model of what each input
// becomes at the sink, and the pipe a spec builds (its sink receives item lists).
module KFlow.Core.Tests.PipeSpec

open System
open System.Threading.Tasks
open KFlow

/// One generated input message (its value is Value).
type Input = {
    Partition: int
    Offset: int64
    Key: string
    Value: int
}

/// A value flowing through a generated pipe: it remembers its input and its unfold path.
type Item = {
    Origin: Input
    N: int
    Path: int list
}

/// A generated stage over items.
type StageSpec =
    /// N becomes (N + k) % 100.
    | MapAdd of k: int
    /// Drops items whose N is a multiple of the modulus.
    | FilterOut of modulus: int
    /// (N + shift) % 4 children (0 to 3).
    | Unfold of shift: int
    /// Stateful (Stage.create): holds the latest envelope until the next message, tick, flush or revoke.
    | Delay
    /// An asynchronous map (mapAsync, parallelism 2): N becomes (N + k) % 100.
    | AsyncAdd of k: int

/// A generated aggregate.
type AggSpec =
    | ByCount of count: int
    | ByAge of seconds: int
    /// Buffer.bytes with an item's size 1 + N % 5.
    | ByBytes of maxBytes: int

/// How a generated pipe ends (before its sink, which always receives an item list).
type TailSpec =
    /// An aggregate, or a singleton list per item.
    | Plain of AggSpec option
    /// Demux by key (or by a bucket of keys), with stages and an optional aggregate inside.
    | Demux of buckets: int option * idleSeconds: int * StageSpec list * AggSpec option
    /// mfd: drops items whose N is a multiple of the modulus, demuxes the rest by key.
    | Mfd of modulus: int * StageSpec list * AggSpec option
    /// routeDependent by key: keys a and b run the first stages, other keys the second.
    | Route of StageSpec list * StageSpec list * AggSpec option
    /// split by key, stages and an optional aggregate per substream, then join (or no join: to the end).
    | Split of StageSpec list * AggSpec option * joined: bool

/// A generated pipe.
type PipeSpec = {
    Stages: StageSpec list
    Tail: TailSpec
}

let tpOf (partition: int) = TopicPartition.create "in" partition

let positionOf (input: Input) =
    Position.create (tpOf input.Partition) input.Offset

// ---- the model: what each input becomes ----

let private applyStage (spec: StageSpec) (items: Item list) =
    items
    |> List.collect (fun it ->
        match spec with
        | MapAdd k
        | AsyncAdd k -> [ { it with N = (it.N + k) % 100 } ]
        | FilterOut m -> if it.N % m = 0 then [] else [ it ]
        | Unfold s -> [
            for j in 0 .. (it.N + s) % 4 - 1 ->
                {
                    it with
                        N = (it.N * 7 + j) % 100
                        Path = it.Path @ [ j ]
                }
          ]
        | Delay -> [ it ])

/// The items an input becomes at the sink, in order (empty: it is dropped).
let leaves (spec: PipeSpec) (input: Input) =
    let start = [
        {
            Origin = input
            N = input.Value
            Path = []
        }
    ]

    let pre = List.fold (fun items s -> applyStage s items) start spec.Stages

    let through subs items =
        List.fold (fun items s -> applyStage s items) items subs

    match spec.Tail with
    | Plain _ -> pre
    | Demux(_, _, subs, _) -> through subs pre
    | Mfd(m, subs, _) -> pre |> List.filter (fun it -> it.N % m <> 0) |> through subs
    | Route(first, second, _) -> through (if input.Key < "c" then first else second) pre
    | Split(subs, _, _) -> through subs pre

// ---- building the pipe ----

let private delay (_: DateTimeOffset) (event: Event<Item>) (held: Envelope<Item> option) =
    match event, held with
    | Message e, None -> Some e, Output.none
    | Message e, Some h -> Some e, Output.emit h
    | (Tick | Flush | Revoked _), Some h -> None, Output.emit h
    | _ -> held, Output.none

let private addStage (spec: StageSpec) (pipe: Pipe<'i, Item>) : Pipe<'i, Item> =
    match spec with
    | MapAdd k -> pipe |> Pipe.map (fun it -> { it with N = (it.N + k) % 100 })
    | FilterOut m -> pipe |> Pipe.filter (fun it -> it.N % m <> 0)
    | Unfold _ -> pipe |> Pipe.unfold (fun it -> applyStage spec [ it ])
    | Delay -> pipe |> Pipe.stateful "delay" None delay
    | AsyncAdd k ->
        pipe
        |> Pipe.mapAsync 2 (fun it -> Task.FromResult { it with N = (it.N + k) % 100 })

let private addTail (agg: AggSpec option) (pipe: Pipe<'i, Item>) : Pipe<'i, Item list> =
    match agg with
    | None -> pipe |> Pipe.map List.singleton
    | Some(ByCount n) -> pipe |> Pipe.aggregate (Buffer.count n)
    | Some(ByAge s) -> pipe |> Pipe.aggregate (Buffer.age (TimeSpan.FromSeconds(float s)))
    | Some(ByBytes b) -> pipe |> Pipe.aggregate (Buffer.bytes (fun it -> int64 (1 + it.N % 5)) (int64 b))

/// The key a generated demux splits by.
let demuxKey (buckets: int option) (it: Item) =
    match buckets with
    | None -> it.Origin.Key
    | Some b -> string (int it.Origin.Key[0] % b)

/// The pipe of a spec; its sink "sink" receives item lists and always succeeds when run.
let build (spec: PipeSpec) : Pipe<Input, Sunk> =
    let pre =
        (Pipe.source<Input> |> Pipe.map (fun i -> { Origin = i; N = i.Value; Path = [] }), spec.Stages)
        ||> List.fold (fun p s -> addStage s p)

    let tail =
        match spec.Tail with
        | Plain agg -> pre |> addTail agg
        | Demux(buckets, idle, subs, agg) ->
            pre
            |> Pipe.demuxWith
                {
                    IdleAfter = TimeSpan.FromSeconds(float idle)
                }
                (demuxKey buckets)
                (fun sub -> (sub, subs) ||> List.fold (fun p s -> addStage s p) |> addTail agg)
        | Mfd(m, subs, agg) ->
            pre
            |> Pipe.mfd (fun it -> if it.N % m = 0 then None else Some(it.Origin.Key, it)) (fun sub ->
                (sub, subs) ||> List.fold (fun p s -> addStage s p) |> addTail agg)
        | Route(first, second, agg) ->
            pre
            |> Pipe.routeDependent (fun it -> it.Origin.Key) (fun key sub ->
                (sub, (if key < "c" then first else second))
                ||> List.fold (fun p s -> addStage s p)
                |> addTail agg)
        | Split(subs, agg, joined) ->
            let split =
                (pre |> Pipe.split (fun it -> it.Origin.Key), subs)
                ||> List.fold (fun p s -> addStage s p)
                |> addTail agg

            if joined then Pipe.join split else split

    tail |> Pipe.sink "sink" (fun (_: Item list) -> Task.CompletedTask)
