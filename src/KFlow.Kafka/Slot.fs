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
