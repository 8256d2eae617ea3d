// Tests for src/KFlow.Kafka/DeadLetterWriter.fs (its pure part): the failure headers of a
// dead-lettered message. The write itself is tested on the embedded cluster (SupervisionTests).
module KFlow.Kafka.Tests.DeadLetterWriterTests

open System
open System.Text
open Expecto
open KFlow.Kafka

let tests =
    testList "DeadLetterWriter" [
        test "the headers name the source topic, partition, offset, stage, error, attempts and time" {
            let at = DateTimeOffset(2026, 11, 26, 23, 0, 0, TimeSpan.Zero)

            let headers =
                DeadLetterHeaders.create "orders" 3 42L "parse" (FormatException "bad json") 4 at
                |> List.map (fun (k, v) -> k, Encoding.UTF8.GetString v)

            Expect.equal
                headers
                [
                    "kflow.source.topic", "orders"
                    "kflow.source.partition", "3"
                    "kflow.source.offset", "42"
                    "kflow.stage", "parse"
                    "kflow.error.type", "System.FormatException"
                    "kflow.error.message", "bad json"
                    "kflow.attempts", "4"
                    "kflow.timestamp", "2026-11-26T23:00:00.0000000Z"
                ]
                "every header, in order"
        }
    ]
