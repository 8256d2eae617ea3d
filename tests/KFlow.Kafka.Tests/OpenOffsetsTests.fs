// Tests for src/KFlow.Kafka/OpenOffsets.fs: the consumed messages kept for open offsets, as
// dead-lettering reads them (every message of a batch, each once), and the commit point after.
module KFlow.Kafka.Tests.OpenOffsetsTests

open System.Text
open Confluent.Kafka
open Expecto
open KFlow.Kafka

let private tp = KFlow.TopicPartition.create "t" 0

let private consumed (offset: int64) =
    ConsumeResult<byte[], byte[]>(
        Topic = "t",
        Partition = Partition 0,
        Offset = Offset offset,
        Message =
            Message<byte[], byte[]>(
                Key = Encoding.UTF8.GetBytes "k",
                Value = Encoding.UTF8.GetBytes $"v{offset}"
            )
    )

/// Open offsets with offsets 0 to 4 delivered, and their tokens.
let private delivered () =
    let offsets = OpenOffsets(tp, Counters "open-offsets-tests", ignore)

    let tokens = [
        for o in 0L .. 4L ->
            match offsets.Deliver(consumed o, "k", 1L) with
            | Ok token -> token
            | Error e -> failtestf "delivery refused: %A" e
    ]

    offsets, tokens

let private offsetsOf (messages: ConsumeResult<byte[], byte[]> list voption) =
    messages |> ValueOption.map (List.map (fun m -> m.Offset.Value))

let tests =
    testList "OpenOffsets" [
        test
            "without dead-lettering an open offset keeps its message's key text for reports but not the message" {
            let offsets = OpenOffsets(tp, Counters "open-offsets-tests", ignore, false)

            let token =
                match offsets.Deliver(consumed 0L, "k", 1L) with
                | Ok token -> token
                | Error e -> failtestf "delivery refused: %A" e

            Expect.equal (offsets.KeyAt(ValueSome 0L)) (ValueSome "k") "the key is kept"
            Expect.equal (offsetsOf (offsets.DeadLetterable [ token ])) ValueNone "the message is not"
            offsets.Complete token
            Expect.equal offsets.CommitPoint (ValueSome 1L) "the offset finishes as usual"
        }
        test "with dead-lettering an open offset keeps its message and its key" {
            let offsets, tokens = delivered ()
            Expect.equal (offsets.KeyAt(ValueSome 2L)) (ValueSome "k") "the key"
            Expect.equal (offsetsOf (offsets.DeadLetterable [ tokens[2] ])) (ValueSome [ 2L ]) "the message"
        }
        test "a batch's messages are dead-letterable each once, in token order" {
            let offsets, tokens = delivered ()
            let batch = [ tokens[3]; tokens[1]; tokens[3]; tokens[4] ]
            Expect.equal (offsetsOf (offsets.DeadLetterable batch)) (ValueSome [ 3L; 1L; 4L ]) "3, 1, 4"
        }
        test "nothing is dead-letterable once one of the batch's offsets is finished, or without a token" {
            let offsets, tokens = delivered ()
            offsets.Complete tokens[2]

            Expect.equal
                (offsetsOf (offsets.DeadLetterable [ tokens[1]; tokens[2] ]))
                ValueNone
                "2 is finished"

            Expect.equal (offsetsOf (offsets.DeadLetterable [])) ValueNone "no token"
        }
        test "completing a dead-lettered batch's tokens moves the commit point past it" {
            let offsets, tokens = delivered ()
            offsets.Complete tokens[0]

            for t in tokens[1..3] do
                offsets.Complete t

            Expect.equal offsets.CommitPoint (ValueSome 4L) "up to the still open offset 4"
        }
    ]
