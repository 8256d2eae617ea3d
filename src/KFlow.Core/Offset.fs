// Where a message comes from: a topic-partition and an offset in it. These values are the
// vocabulary of the ledger and of ack tokens, so they are small structs with structural equality.
namespace KFlow

/// A Kafka topic and partition.
[<Struct; CustomEquality; CustomComparison>]
type TopicPartition = {
    Topic: string
    Partition: int
} with

    override this.ToString() =
        sprintf "%s[%d]" this.Topic this.Partition

    override this.Equals(other: obj) =
        match other with
        | :? TopicPartition as o -> this.Partition = o.Partition && System.String.Equals(this.Topic, o.Topic)
        | _ -> false

    override this.GetHashCode() =
        System.HashCode.Combine(this.Topic, this.Partition)

    interface System.IEquatable<TopicPartition> with
        member this.Equals(o: TopicPartition) =
            this.Partition = o.Partition && System.String.Equals(this.Topic, o.Topic)

    interface System.IComparable<TopicPartition> with
        member this.CompareTo(o: TopicPartition) =
            let c = System.String.CompareOrdinal(this.Topic, o.Topic)
            if c <> 0 then c else compare this.Partition o.Partition

    interface System.IComparable with
        member this.CompareTo(other: obj) =
            match other with
            | :? TopicPartition as o -> (this :> System.IComparable<TopicPartition>).CompareTo o
            | _ -> invalidArg "other" "A TopicPartition can only be compared with another TopicPartition."

/// Functions over TopicPartition.
[<RequireQualifiedAccess>]
module TopicPartition =
    /// The topic-partition of the given topic name and partition number.
    let create (topic: string) (partition: int) : TopicPartition =
        if isNull topic || topic.Length = 0 then
            invalidArgWith
                "topic"
                "The topic name must not be empty; pass the Kafka topic the partition belongs to."

        if partition < 0 then
            invalidArgWith "partition" (sprintf "Partition numbers are ≥ 0 (got %d)." partition)

        { Topic = topic; Partition = partition }

/// One message's place in Kafka: a topic-partition and an offset.
[<Struct>]
type Position = {
    TopicPartition: TopicPartition
    Offset: int64
} with

    override this.ToString() =
        sprintf "%O@%d" this.TopicPartition this.Offset

/// Functions over Position.
[<RequireQualifiedAccess>]
module Position =
    /// The position of an offset in a topic-partition.
    let create (tp: TopicPartition) (offset: int64) : Position =
        if offset < 0L then
            invalidArgWith "offset" (sprintf "Kafka offsets are ≥ 0 (got %d)." offset)

        { TopicPartition = tp; Offset = offset }
