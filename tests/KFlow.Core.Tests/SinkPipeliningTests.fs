// Tests for src/KFlow.Core/SinkPipelining.fs: how a sink declares pipelined writes, and how the
// interpreter hands the declaration to the runtime with each write request.
module KFlow.Core.Tests.SinkPipeliningTests

open System
open System.Threading.Tasks
open Expecto
open KFlow

let private tp = TopicPartition.create "t" 0

let private message offset (value: 'a) =
    let m = Message.create tp offset (string value) value
    Message(Envelope.box (Envelope.ofMessage { Position = m.Position; Epoch = 1 } m))

let private store = {
    GroupId = "g"
    Load = fun _ -> Task.FromResult Map.empty
    Prune = fun _ -> Task.CompletedTask
}

/// The sink requests of pushing one message through the pipe.
let private requests (pipe: Pipe<int, Sunk>) =
    let _, effects =
        PipeRun.start pipe |> PipeRun.push DateTimeOffset.UnixEpoch (message 0L 7)

    effects.Sinks

let tests =
    testList "SinkPipelining" [
        test "an ordinary sink runs one write at a time per substream" {
            Expect.equal SinkPipelining.sequential.InFlight 1 "one in flight"
            let pipe = Pipe.source<int> |> Pipe.sink "db" (fun _ -> Task.CompletedTask)

            match requests pipe with
            | [ r ] -> Expect.equal r.Pipelining.InFlight 1 "the request says one at a time"
            | rs -> failtestf "expected one request, got %d" rs.Length
        }

        test "a pipelined sink's requests carry its declaration, exactly-once sinks too" {
            let reserved = ResizeArray<obj>()

            let p =
                SinkPipelining.create
                    4
                    (fun v ->
                        reserved.Add v
                        Task.CompletedTask)
                    ignore

            let plain = Pipe.source<int> |> Pipe.sinkWith p "db" (fun _ -> Task.CompletedTask)

            let once =
                Pipe.source<int>
                |> Pipe.sinkExactlyOnceWith p "db" store (fun _ _ -> Task.CompletedTask)

            for pipe in [ plain; once ] do
                match requests pipe with
                | [ r ] ->
                    Expect.equal r.Pipelining.InFlight 4 "four in flight"
                    r.Pipelining.Reserve r.Envelope.Value |> ignore
                | rs -> failtestf "expected one request, got %d" rs.Length

            Expect.equal
                (reserved |> Seq.map unbox<int> |> List.ofSeq)
                [ 7; 7 ]
                "the sink's own Reserve, given the value"
        }

        test "fewer than one write in flight is refused with a sentence naming the setting" {
            let message =
                try
                    SinkPipelining.create 0 (fun _ -> Task.CompletedTask) ignore |> ignore
                    failtest "0 in flight was accepted"
                    ""
                with :? ArgumentException as e ->
                    e.Message

            Expect.stringContains message "≥ 1" "the message says what to set"

            Expect.throwsT<ArgumentException>
                (fun () ->
                    Pipe.source<int>
                    |> Pipe.sinkWith
                        {
                            SinkPipelining.sequential with
                                InFlight = -1
                        }
                        "db"
                        (fun _ -> Task.CompletedTask)
                    |> ignore)
                "a sink declared with -1"
        }
    ]
