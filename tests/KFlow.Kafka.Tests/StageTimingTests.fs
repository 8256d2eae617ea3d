// Tests for src/KFlow.Kafka/StageTiming.fs: the stage latency histogram records each pure stage's
// message steps under the stage's name, and timing leaves what the pipe does unchanged.
module KFlow.Kafka.Tests.StageTimingTests

open System.Collections.Concurrent
open System.Diagnostics.Metrics
open Expecto
open KFlow
open KFlow.Kafka

let private tp = TopicPartition.create "t" 0

/// Counts the latency measurements per stage of workflow `workflow` while `listener` lives.
let private counting (workflow: string) =
    let seen = ConcurrentDictionary<string, int>()
    let listener = new MeterListener()

    listener.InstrumentPublished <-
        fun instrument l ->
            if
                instrument.Meter.Name = StageTiming.MeterName
                && instrument.Name = StageTiming.InstrumentName
            then
                l.EnableMeasurementEvents instrument

    listener.SetMeasurementEventCallback<float>(fun _ value tags _ ->
        let tags =
            tags.ToArray() |> Array.map (fun kv -> kv.Key, string kv.Value) |> Map.ofArray

        if tags["workflow"] = workflow && value >= 0. then
            seen.AddOrUpdate(tags["stage"], 1, (fun _ n -> n + 1)) |> ignore)

    listener.Start()
    seen, listener

let tests =
    testList "StageTiming" [
        test "a timed pipe records one duration per message and pure stage, tagged with the stage's name" {
            let seen, listener = counting "timing-test"
            use _ = listener

            let pipe =
                Pipe.source<int>
                |> Pipe.filter (fun v -> v % 2 = 0)
                |> Pipe.demux string (fun sub -> sub |> Pipe.map (fun v -> v + 1))

            let d =
                StageTiming.pipe "timing-test" pipe
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for i in 0..5 -> Message.create tp (int64 i) "" i ]

            Expect.equal (TestDriver.outputs d |> List.map _.Value) [ 1; 3; 5 ] "the same outputs"
            Expect.equal (seen.GetOrAdd("filter", 0)) 6 "the filter, for each of the 6 messages"
            Expect.equal (seen.GetOrAdd("map", 0)) 3 "the map inside the demux, for the 3 it received"
        }
        test "a timed pipe records the aggregate's message steps, which it takes apart from its other events" {
            let seen, listener = counting "timing-aggregate"
            use _ = listener

            let pipe =
                Pipe.source<int>
                |> Pipe.demux (fun v -> string (v % 2)) (fun sub -> sub |> Pipe.aggregate (Buffer.count 2))

            let d =
                StageTiming.pipe "timing-aggregate" pipe
                |> TestDriver.start
                |> TestDriver.assign tp
                |> TestDriver.feedAll [ for i in 0..5 -> Message.create tp (int64 i) "" i ]

            Expect.equal (TestDriver.outputs d |> List.map _.Value) [ [ 0; 2 ]; [ 1; 3 ] ] "the same batches"

            Expect.equal (seen.GetOrAdd("aggregate", 0)) 6 "the aggregate, for each of the 6 messages"
        }
    ]
