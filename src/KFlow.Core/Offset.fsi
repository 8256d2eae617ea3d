// Signature of the offset types: topic-partitions and positions, the coordinates every token carries.
namespace KFlow

/// A Kafka topic and partition.
[<CustomEquality; CustomComparison; Struct>]
type TopicPartition = {
    Topic: string
    Partition: int
} with

    interface System.IComparable
    interface System.IComparable<TopicPartition>
    interface System.IEquatable<TopicPartition>

    override Equals: other: obj -> bool

    override GetHashCode: unit -> int

    override ToString: unit -> string

/// Functions over TopicPartition.
[<RequireQualifiedAccess>]
module TopicPartition =

    /// The topic-partition of the given topic name and partition number.
    val create: topic: string -> partition: int -> TopicPartition

/// One message's place in Kafka: a topic-partition and an offset.
[<Struct>]
type Position = {
    TopicPartition: TopicPartition
    Offset: int64
} with

    override ToString: unit -> string

/// Functions over Position.
[<RequireQualifiedAccess>]
module Position =

    /// The position of an offset in a topic-partition.
    val create: tp: TopicPartition -> offset: int64 -> Position
