// The C# face of Pipe: static PascalCase members taking Func<>/Task, so the C# facade
// (src-csharp/KFlow.Hosting) builds pipes without FSharpFunc, FSharpList or FSharpOption.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open System.Threading.Tasks
open KFlow

/// <summary>Builds pipes from C#: each member appends one stage to a pipe and returns the new pipe
/// (pipes are immutable). The F# API is the <c>Pipe</c> module; this class is its C# face.</summary>
[<AbstractClass; Sealed>]
type PipeCore =
    /// The pipe a workflow runs: its input is each Kafka message's value bytes (null for a tombstone).
    static member Source() : Pipe<byte[], byte[]> = Pipe.source<byte[]>

    /// <summary>One in, one out; <paramref name="f"/> receives the Kafka key ("" when null), the
    /// partition, the offset, the timestamp and the value of the message the value stands for.</summary>
    static member MapMessage
        (pipe: Pipe<'i, 'a>, f: Func<string, int, int64, DateTimeOffset, 'a, 'b>)
        : Pipe<'i, 'b> =
        pipe
        |> Pipe.mapEnvelope (fun e ->
            f.Invoke(e.Key, e.Position.TopicPartition.Partition, e.Position.Offset, e.Timestamp, e.Value))

    /// One in, one out, tokens kept.
    static member Map(pipe: Pipe<'i, 'a>, f: Func<'a, 'b>) : Pipe<'i, 'b> = pipe |> Pipe.map f.Invoke

    /// Keeps the values satisfying the predicate; a dropped value is finished.
    static member Filter(pipe: Pipe<'i, 'a>, predicate: Func<'a, bool>) : Pipe<'i, 'a> =
        pipe |> Pipe.filter predicate.Invoke

    /// One in, zero or more out; the input's offset is finished when all of its outputs are.
    static member Unfold(pipe: Pipe<'i, 'a>, f: Func<'a, IEnumerable<'b>>) : Pipe<'i, 'b> =
        pipe |> Pipe.unfold (fun a -> List.ofSeq (f.Invoke a))

    /// An asynchronous map with at most `parallelism` (≥ 1) calls in flight; results keep input order.
    static member MapAsync(pipe: Pipe<'i, 'a>, parallelism: int, f: Func<'a, Task<'b>>) : Pipe<'i, 'b> =
        pipe |> Pipe.mapAsync parallelism f.Invoke

    /// <summary>A stateful stage that holds no values: for each value, <paramref name="step"/> returns
    /// the new state and the values to emit in its place (none finishes the input). The state is per
    /// partition, or per substream inside a demux.</summary>
    static member Scan
        (
            pipe: Pipe<'i, 'a>,
            name: string,
            initial: 's,
            step: Func<'s, 'a, KeyValuePair<'s, IReadOnlyList<'b>>>
        ) : Pipe<'i, 'b> =
        pipe
        |> Pipe.stateful name initial (fun _ event state ->
            match event with
            | Message envelope ->
                let next = step.Invoke(state, envelope.Value)
                let values = if isNull next.Value then [] else List.ofSeq next.Value
                next.Key, Output.split values envelope
            | _ -> state, Output.none)

    /// <summary>Opens a demux: the stages appended after it run per substream (per key, order kept,
    /// substreams concurrent) until <c>Join</c> or the end of the pipe. Idle substreams are dropped
    /// after 60 s.</summary>
    static member Split(pipe: Pipe<'i, 'a>, key: Func<'a, string>) : Pipe<'i, 'a> =
        pipe |> Pipe.split key.Invoke

    /// <summary>Opens a demux by the envelope's key (the Kafka key, or the key an earlier <c>Mfd</c>
    /// set): the stages appended after it run per key until <c>Join</c> or the end of the pipe.</summary>
    static member SplitByKey(pipe: Pipe<'i, 'a>) : Pipe<'i, 'a> = pipe |> Pipe.splitByKey

    /// <summary>Map + filter + demux (KFlow's mfd): <paramref name="f"/> returns (false, _, _) to drop
    /// a value (it is finished) or (true, key, value) to send the value to the substream of that key;
    /// the stages appended after it run per key until <c>Join</c> or the end of the pipe. The stage is
    /// named "mfd". (A struct triple rather than a Nullable pair: F# cannot form Nullable of a generic
    /// tuple.)</summary>
    static member Mfd(pipe: Pipe<'i, 'a>, f: Func<'a, struct (bool * string * 'b)>) : Pipe<'i, 'b> =
        pipe
        |> Pipe.via (
            Stage.mapFilterKey (fun a ->
                match f.Invoke a with
                | struct (true, key, value) -> Some(key, value)
                | _ -> None)
        )
        |> Pipe.splitByKey

    /// <summary>Like a demux, but each key gets its own stages: on a key's first message,
    /// <paramref name="route"/> receives the key and an empty pipe and appends that key's stages to
    /// it. The substreams are joined after it. The route runs on the partition loop; an exception in it
    /// is a failure of that message.</summary>
    static member RouteDependent
        (pipe: Pipe<'i, 'a>, key: Func<'a, string>, route: Func<string, Pipe<'i, 'a>, Pipe<'i, 'b>>)
        : Pipe<'i, 'b> =
        pipe |> Pipe.routeSplit key.Invoke (fun k empty -> route.Invoke(k, empty))

    /// <summary>Assembles objects split across messages (see Chunks.assemble):
    /// <paramref name="chunkOf"/> reads (object id, index, count, part) from a value; once every
    /// chunk of an object has arrived, <paramref name="combine"/> receives its parts in index order
    /// and its result stands for all the chunks. The stage is named "assembleChunks".</summary>
    static member AssembleChunks
        (
            pipe: Pipe<'i, 'a>,
            chunkOf: Func<'a, struct (string * int * int * 'p)>,
            combine: Func<IReadOnlyList<'p>, 'b>
        ) : Pipe<'i, 'b> =
        let chunk a =
            let struct (id, index, count, part) = chunkOf.Invoke a

            {
                Id = id
                Index = index
                Count = count
                Part = part
            }

        pipe
        |> Pipe.assembleChunks chunk (fun parts -> combine.Invoke(List.toArray parts :> IReadOnlyList<'p>))

    /// <summary>A user stage that holds values (KFlow's kflow_gen_aggregate): each value is added to the
    /// user's state by <paramref name="add"/>, which returns the new state and the values to emit. The
    /// values emitted stand for every value added since the previous emission (their offsets finish
    /// when the emitted values do; none emitted: the added values stay held). <paramref name="tick"/>
    /// (null: none) may emit on the workflow's tick; <paramref name="flush"/> (null: emits nothing)
    /// gives what to emit for the held values on revoke and shutdown, after which the state is
    /// <paramref name="initial"/> again. Values emitted while nothing is held are discarded (they
    /// would stand for no offset). The state is per partition, or per substream inside a demux.</summary>
    static member Stateful
        (
            pipe: Pipe<'i, 'a>,
            name: string,
            initial: 's,
            add: Func<'s, 'a, KeyValuePair<'s, IReadOnlyList<'b>>>,
            [<Optional>] tick: Func<'s, DateTimeOffset, KeyValuePair<'s, IReadOnlyList<'b>>>,
            [<Optional>] flush: Func<'s, IReadOnlyList<'b>>
        ) : Pipe<'i, 'b> =
        let values (emitted: IReadOnlyList<'b>) =
            if isNull emitted then [] else List.ofSeq emitted

        // The held envelopes (newest first) become the inputs of the next emission.
        let release (held: Envelope<unit> list) (emitted: 'b list) =
            match held with
            | [] -> Output.none
            | _ -> Output.split emitted (Envelope.merge () (List.rev held))

        let step now event (struct (state: 's, held: Envelope<unit> list)) =
            match event with
            | Message envelope ->
                let next = add.Invoke(state, envelope.Value)
                let held = Envelope.withValue () envelope :: held

                match values next.Value with
                | [] -> struct (next.Key, held), Output.none
                | emitted -> struct (next.Key, []), release held emitted
            | Tick when not (isNull tick) ->
                let next = tick.Invoke(state, now)

                match values next.Value with
                | [] -> struct (next.Key, held), Output.none
                | emitted -> struct (next.Key, []), release held emitted
            | Flush
            | Revoked _ ->
                let emitted = if isNull flush then [] else values (flush.Invoke state)
                struct (initial, []), release held emitted
            | Tick
            | Assigned _ -> struct (state, held), Output.none

        pipe |> Pipe.stateful name (struct (initial, [])) step

    /// Closes the innermost open demux. ArgumentException when none is open.
    static member Join(pipe: Pipe<'i, 'a>) : Pipe<'i, 'a> = pipe |> Pipe.join

    /// <summary>Batches values: a batch is emitted when it holds <paramref name="maxCount"/> values or
    /// when its first value has waited <paramref name="maxAge"/> (null: no limit of that kind; at least
    /// one limit must be set), and on revoke and shutdown.</summary>
    static member Aggregate
        (pipe: Pipe<'i, 'a>, maxCount: Nullable<int>, maxAge: Nullable<TimeSpan>)
        : Pipe<'i, IReadOnlyList<'a>> =
        let options = {
            Buffer.options<'a> with
                MaxCount = Option.ofNullable maxCount
                MaxAge = Option.ofNullable maxAge
        }

        pipe
        |> Pipe.aggregate (Buffer.create options)
        |> Pipe.map (fun batch -> List.toArray batch :> IReadOnlyList<'a>)

    /// A sink named `name`: `write` receives each value; its tokens complete when the Task succeeds.
    static member Sink(pipe: Pipe<'i, 'a>, name: string, write: Func<'a, Task>) : Pipe<'i, Sunk> =
        pipe |> Pipe.sink name write.Invoke

    /// A readable outline of the pipe, one node per line.
    static member Describe(pipe: Pipe<'i, 'o>) : string = Pipe.describe pipe
