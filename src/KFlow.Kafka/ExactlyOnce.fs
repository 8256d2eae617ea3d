// Exactly-once mode in the runtime: the applied-offset stores of a pipe's exactly-once sinks
// (Pipe.sinkExactlyOnce) are read when partitions are assigned, so each partition resumes past its applied
// offsets and skips the applied ones it reads again; they are pruned once Kafka has committed past them.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open KFlow

/// Where an assigned partition starts in exactly-once mode and which offsets it completes unread.
[<NoEquality; NoComparison>]
type internal Resume = {
    /// The start offset handed back to the consumer (Offset.Unset: Kafka's committed offset).
    Start: TopicPartitionOffset
    /// Offsets at or above the start whose effect is applied: completed when read, not run again.
    Skip: HashSet<int64>
}

/// The exactly-once mode of one workflow: the stores to read, and the pruning in flight.
[<Sealed>]
type internal ExactlyOnce(stores: AppliedOffsetStore list, timeout: TimeSpan, log: string -> unit) =
    let mutable pruning = 0

    let wait (what: string) (t: Task<'t>) =
        if not (t.Wait timeout) then
            raise (TimeoutException $"{what} did not answer within {timeout}.")

        t.Result

    /// Whether the pipe has exactly-once sinks.
    member _.Enabled = not stores.IsEmpty

    /// <summary>Where each assigned partition starts and what it skips (consumer thread, in the assignment
    /// handler; blocking).</summary>
    /// <remarks>
    /// 1. Reads Kafka's committed offsets of the partitions.
    /// 2. Asks every store for its applied offsets at or above them (a partition without a committed
    ///    offset asks from 0 and starts where auto.offset.reset says).
    /// 3. Starts each partition past the applied offsets that follow its committed offset one by one;
    ///    the applied offsets after a gap are skipped when read.
    /// Raises if Kafka or a store cannot answer: the incarnation fails and restarts, reading nothing.
    /// </remarks>
    member _.Resume(consumer: IConsumer<byte[], byte[]>, parts: List<Confluent.Kafka.TopicPartition>) =
        let committed =
            consumer.Committed(parts, timeout)
            |> Seq.map (fun c ->
                let offset = c.Offset
                let tp = KFlow.TopicPartition.create c.Topic c.Partition.Value

                c.TopicPartition,
                tp,
                (if offset.IsSpecial then
                     ValueNone
                 else
                     ValueSome offset.Value))
            |> List.ofSeq

        let asked =
            committed
            |> List.map (fun (_, tp, offset) -> tp, ValueOption.defaultValue 0L offset)

        let applied =
            stores
            |> List.map (fun store -> wait "The applied-offset store" (store.Load asked))

        committed
        |> List.map (fun (kafka, tp, offset) ->
            let recorded =
                applied
                |> Seq.collect (fun found -> Map.tryFind tp found |> Option.defaultValue [||])
                |> Seq.distinct
                |> Seq.sort
                |> Array.ofSeq

            let start =
                match offset with
                | ValueSome c -> AppliedOffsets.resumeAt c recorded
                | ValueNone -> -1L

            let skip = HashSet<int64>(recorded |> Seq.filter (fun o -> o >= start))

            if start > 0L && offset <> ValueSome start then
                log
                    $"{kafka}: exactly-once: resuming at {start}, past the applied offsets after {offset.Value}"

            if skip.Count > 0 then
                log $"{kafka}: exactly-once: {skip.Count} applied offset(s) after a gap will be skipped"

            {
                Start =
                    TopicPartitionOffset(
                        kafka,
                        (if start >= 0L && offset <> ValueSome start then
                             Offset start
                         else
                             Offset.Unset)
                    )
                Skip = skip
            })

    /// Forgets the applied offsets below offsets Kafka committed (from the commit handler; one prune at
    /// a time runs in the background, a failure is logged and retried at the next commit).
    member _.Prune(committed: CommittedOffsets) =
        let offsets =
            committed.Offsets
            |> Seq.choose (fun o ->
                let offset = o.Offset

                if o.Error.IsError || offset.IsSpecial then
                    None
                else
                    Some(KFlow.TopicPartition.create o.Topic o.Partition.Value, offset.Value))
            |> List.ofSeq

        if not offsets.IsEmpty && Interlocked.CompareExchange(&pruning, 1, 0) = 0 then
            task {
                try
                    try
                        for store in stores do
                            do! store.Prune offsets
                    with e ->
                        log $"exactly-once: pruning the applied offsets failed (retried later): {e.Message}"
                finally
                    Volatile.Write(&pruning, 0)
            }
            |> ignore

/// Checking a pipe for exactly-once mode.
[<RequireQualifiedAccess>]
module internal ExactlyOnce =

    let private unfolds (pipe: Pipe<'i, 'o>) =
        let rec walk (nodes: Node list) =
            nodes
            |> List.exists (fun node ->
                match node with
                | StageNode stage -> Stage.name stage = "unfold"
                | DemuxNode { Route = Same sub } -> walk sub
                | _ -> false)

        walk (Pipe.nodes pipe)

    /// <summary>The pipe's exactly-once mode. ArgumentException when a store records another consumer
    /// group than the workflow's, or the pipe has an unfold (a message reaching the sink as several
    /// values would have its offset recorded with the first and the rest lost on a replay).</summary>
    let ofPipe (options: WorkflowOptions) (pipe: Pipe<'i, 'o>) =
        let stores = Pipe.appliedOffsetStores pipe

        for store in stores do
            if store.GroupId <> options.GroupId then
                raise (
                    ArgumentException(
                        $"The pipe's exactly-once sink records offsets for group '{store.GroupId}', but the \
                          workflow's group is '{options.GroupId}'; give the sink WorkflowOptions.GroupId.",
                        "pipe"
                    )
                )

        if not stores.IsEmpty && unfolds pipe then
            raise (
                ArgumentException(
                    "Exactly-once mode needs each message to reach its sink as one value, but the pipe has an \
                     unfold, which splits a message into several: its offset would be recorded with the first \
                     part and the others lost on a replay. Emit the parts as one value (e.g. a list) or use a \
                     plain sink (at-least-once, idempotent upserts).",
                    "pipe"
                )
            )

        ExactlyOnce(stores, options.StartTimeout, options.Log)
