// Tests for src/KFlow.Core/Offset.fs: topic-partitions and positions.
module KFlow.Core.Tests.OffsetTests

open Expecto
open KFlow

let tests =
    testList "Offset" [
        test "topic-partitions with the same topic and partition are equal" {
            Expect.equal
                (TopicPartition.create "a" 1)
                (TopicPartition.create "a" 1)
                "same topic and partition"

            Expect.notEqual (TopicPartition.create "a" 1) (TopicPartition.create "a" 2) "other partition"
            Expect.notEqual (TopicPartition.create "a" 1) (TopicPartition.create "b" 1) "other topic"
        }
        test "topic-partitions order by topic, then partition" {
            let sorted =
                [
                    TopicPartition.create "b" 0
                    TopicPartition.create "a" 2
                    TopicPartition.create "a" 1
                ]
                |> List.sort

            Expect.equal
                sorted
                [
                    TopicPartition.create "a" 1
                    TopicPartition.create "a" 2
                    TopicPartition.create "b" 0
                ]
                "order"
        }
        test "an empty topic name is refused with a sentence naming the argument" {
            Expect.throwsC (fun () -> TopicPartition.create "" 0 |> ignore) (fun e ->
                Expect.isTrue (e :? System.ArgumentException) "an ArgumentException"
                Expect.stringContains e.Message "topic name must not be empty" "says what is wrong")
        }
        test "a negative partition or offset is refused" {
            Expect.throwsT<System.ArgumentException>
                (fun () -> TopicPartition.create "t" -1 |> ignore)
                "partition"

            Expect.throwsT<System.ArgumentException>
                (fun () -> Position.create (TopicPartition.create "t" 0) -1L |> ignore)
                "offset"
        }
        test "a position prints as topic[partition]@offset" {
            Expect.equal (string (Position.create (TopicPartition.create "t" 3) 42L)) "t[3]@42" "format"
        }
    ]
