// The examples of docs/failure-handling.md, compiled here; the policies example is validated and the
// health example run against a workflow. Each snippet sits between `//[name]` and `//[/name]`.
module KFlow.Kafka.Tests.FailureHandlingDocTests

open System
open System.Text
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka

/// An order as the topic carries it (JSON).
type Order = { Id: int; Amount: decimal }

let private writeOrder (_: Order) = Task.CompletedTask

/// The options of the page's example.
let private exampleOptions (bootstrapServers: string) =
    //[policies]
    let options = {
        WorkflowOptions.create "orders-to-db" bootstrapServers "orders-to-db" [ "orders" ] with
            // Every stage: restart from the committed offsets, 1 s doubling to 1 min, ±20 % jitter.
            OnFailure =
                RestartAndReplay {
                    Backoff.defaults with
                        Max = TimeSpan.FromMinutes 1.
                }
            OnStageFailure =
                Map [
                    // Bad input: straight to the dead-letter topic.
                    Deserialize.StageName, DeadLetter "orders-dlq"
                    // The database: 5 retries in place, then restart and replay.
                    "db", RetryInPlace(5, Backoff.defaults, ErrorPolicy.defaults)
                ]
    }
    //[/policies]
    options

let private examplePipe () =
    //[deserialize]
    let pipe =
        Pipe.source<byte[]>
        |> Deserialize.json<_, Order> // a stage named "deserialize"
        |> Pipe.filter (fun order -> order.Amount > 0m)
        |> Pipe.sink "db" writeOrder
    //[/deserialize]
    pipe

let private watch (handle: WorkflowHandle) (alert: string -> unit) =
    //[health]
    handle.StateChanged.Add(fun state ->
        match state with
        | WorkflowState.BackingOff(failure, delay) ->
            alert
                $"{failure.Stage} failed at {failure.TopicPartition} offset {failure.Offset}; retry in {delay}"
        | WorkflowState.Failed failure -> alert $"halted: {failure.Error.Message}"
        | _ -> ())

    let health = handle.Health

    if not (WorkflowHealth.isHealthy health) then
        alert (WorkflowHealth.describe health) // e.g. "backing off for …, 3 consecutive failures; last: …"
//[/health]

let tests =
    testList "FailureHandlingDoc" [
        test "the page's policies are valid and resolve per stage" {
            let options = WorkflowOptions.validate (exampleOptions "localhost:9092")
            let policies = WorkflowOptions.policies options

            Expect.equal
                (ErrorPolicy.describe (ErrorPolicy.ofStage "deserialize" policies))
                "dead-letter to 'orders-dlq'"
                "bad input"

            Expect.equal (ErrorPolicy.retries (ErrorPolicy.ofStage "db" policies)) 5 "the database"

            Expect.stringContains
                (ErrorPolicy.describe (ErrorPolicy.ofStage "map" policies))
                "restart and replay"
                "others"

            Expect.stringContains
                (Pipe.describe (examplePipe ()))
                "deserialize"
                "the stage is named deserialize"
        }

        testCase "docs/failure-handling.md shows exactly the marked regions of this file"
        <| fun () ->
            KFlow.Testing.DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/failure-handling.md"
                "tests/KFlow.Kafka.Tests/FailureHandlingDocTests.fs"
    ]
