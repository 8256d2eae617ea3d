// The C# face of Pipe: static PascalCase members taking Func<>/Task, so the C# facade
// (src-csharp/KFlow.Hosting) builds pipes without FSharpFunc, FSharpList or FSharpOption.
namespace KFlow.Kafka

open System
open System.Collections.Generic
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
