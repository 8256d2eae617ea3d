// One assigned partition as the consumer thread sees it: its loop, its assignment (generation),
// what was routed and stored, its pause state and the messages held while its intake is closed.
namespace KFlow.Kafka

open System.Collections.Generic
open Confluent.Kafka

/// One assigned partition as the consumer thread sees it (consumer thread only).
[<Sealed; AllowNullLiteral>]
type internal Slot(worker: PartitionWorker, kafka: Confluent.Kafka.TopicPartition, generation: int) =
    member _.Worker = worker
    member _.Kafka = kafka
    member _.Generation = generation
    /// The last offset handed to the pipe in this assignment (-1: none).
    member val LastRouted = -1L with get, set
    /// Messages handed to the pipe in this assignment.
    member val Routed = 0L with get, set
    /// The offset stored last (-1: none).
    member val Stored = -1L with get, set
    /// Exactly-once mode: the offset the partition resumed at, past offsets whose effect is applied
    /// already (every offset below it is finished even if nothing is read); -1 when none.
    member val Floor = -1L with get, set
    /// The partition's own gate (MaxOpenOffsetsPerPartition) is closed.
    member val Closed = false with get, set
    /// The partition is paused in the consumer.
    member val KafkaPaused = false with get, set
    /// Whether KafkaPaused is known (false until the first applyPauses after the assignment).
    member val PauseKnown = false with get, set
    /// Progress of the partition while its own gate is closed.
    member val Stall = Stall.start 0L with get, set
    /// Messages returned by Consume while the partition's intake was closed, in offset order;
    /// handed on first when it reopens (librdkafka may return prefetched messages after a pause).
    member val Held = Queue<struct (ConsumeResult<byte[], byte[]> * int64)>()
    /// Messages admitted to the pipe and not yet handed to the loop: the intake posts them as one
    /// Deliver when it flushes (Intake.Flush, before every Consume call).
    member val Pending = ResizeArray<Consumed>() with get, set

    /// Messages of this assignment in flight.
    member this.Open =
        let p = worker.Published

        if p.Generation = generation then
            this.Routed - p.Finished
        else
            this.Routed

/// Functions on slots.
[<RequireQualifiedAccess>]
module internal Slot =
    /// KFlow's name of a Confluent partition.
    let partitionOf (t: Confluent.Kafka.TopicPartition) =
        KFlow.TopicPartition.create t.Topic t.Partition.Value

    /// <summary>The partition's stats as the consumer thread sees it now: the stored offset, the
    /// consumer's position and the high watermark of its last fetch (both local, no request), the lag
    /// (high watermark minus the safe commit point), the open offsets and the pause state.</summary>
    let stats (consumer: IConsumer<byte[], byte[]>) (slot: Slot) =
        let known (o: Offset) =
            if o.IsSpecial || o.Value < 0L then -1L else o.Value

        let position =
            try
                known (consumer.Position slot.Kafka)
            with _ ->
                -1L

        let high =
            try
                known (consumer.GetWatermarkOffsets(slot.Kafka).High)
            with _ ->
                -1L

        // Lag counts from the safe commit point (what the next commit stores), else the stored
        // offset, else the position.
        let published = slot.Worker.Published

        let from =
            match published.CommitPoint with
            | ValueSome point when published.Generation = slot.Generation -> max point slot.Stored
            | _ when slot.Stored >= 0L -> slot.Stored
            | _ -> position

        {
            Topic = slot.Kafka.Topic
            Partition = slot.Kafka.Partition.Value
            Committed = slot.Stored
            Position = position
            HighWatermark = high
            Lag =
                (if high >= 0L && from >= 0L then
                     max 0L (high - from)
                 else
                     -1L)
            OpenOffsets = slot.Open
            Paused = slot.KafkaPaused
        }
