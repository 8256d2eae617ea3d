// Storing and committing the slots' safe offsets on the consumer (consumer thread only): a store
// never passes the partition loop's commit point (CommitPlan decides), a commit sends what is stored.
namespace KFlow.Kafka

open Confluent.Kafka

/// Stores and commits the safe offsets of slots on one consumer.
[<RequireQualifiedAccess>]
module internal Committer =
    let private position (consumer: IConsumer<byte[], byte[]>) (slot: Slot) =
        try
            let p = consumer.Position slot.Kafka

            if p.IsSpecial || p.Value < 0L then
                ValueNone
            else
                ValueSome p.Value
        with _ ->
            ValueNone

    /// Stores the slot's safe offset when it moved on (nothing between two assignments).
    let store (log: string -> unit) (name: string) (consumer: IConsumer<byte[], byte[]>) (slot: Slot) =
        let p = slot.Worker.Published

        if p.Generation = slot.Generation then
            let lastRouted =
                if slot.LastRouted >= 0L then
                    ValueSome slot.LastRouted
                else
                    ValueNone

            let stored =
                if slot.Stored >= 0L then
                    ValueSome slot.Stored
                else
                    ValueNone

            // The position passes held messages, so it only counts when none is held. The floor
            // (exactly-once resume point) is finished whatever is held: everything below it is applied,
            // so a partition resumed at its end commits that end without reading a message.
            let position =
                match
                    (if slot.Held.Count = 0 then
                         position consumer slot
                     else
                         ValueNone),
                    slot.Floor
                with
                | ValueSome at, floor when at >= floor -> ValueSome at
                | _, floor when floor >= 0L -> ValueSome floor
                | at, _ -> at

            match CommitPlan.toStore p.CommitPoint lastRouted position stored with
            | ValueSome offset ->
                try
                    consumer.StoreOffset(TopicPartitionOffset(slot.Kafka, Offset offset))
                    slot.Stored <- offset
                with :? KafkaException as e ->
                    log $"{name}: storing offset {offset} of {slot.Kafka} failed: {e.Error.Reason}"
            | ValueNone -> ()

    /// Commits the stored offsets of the slots synchronously; false if the commit failed.
    let commitSync
        (log: string -> unit)
        (name: string)
        (counters: Counters)
        (consumer: IConsumer<byte[], byte[]>)
        (slots: Slot seq)
        =
        let offsets =
            slots
            |> Seq.filter (fun s -> s.Stored >= 0L)
            |> Seq.map (fun s -> TopicPartitionOffset(s.Kafka, Offset s.Stored))
            |> List.ofSeq

        if offsets.IsEmpty then
            true
        else
            try
                consumer.Commit offsets
                counters.Committed()

                log
                    $"""{name}: committed {offsets
                                           |> List.map (fun o -> $"{o.TopicPartition}@{o.Offset.Value}")
                                           |> String.concat ", "}"""

                true
            with :? KafkaException as e ->
                log $"{name}: synchronous commit failed (at-least-once still holds): {e.Error.Reason}"
                false
