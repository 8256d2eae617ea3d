// Workflows as values and a list of them run together: KFlow's kflow_config (the list of workflows
// a node runs) as an F# list of definitions that a host starts together and stops together.
namespace KFlow.Kafka

open System
open System.Threading.Tasks
open KFlow

/// <summary>A workflow as a value: its options (validated) and its pipe, not running. Build it with
/// <c>Workflows.define</c>; run it with <c>Workflows.start</c> or in a list with <c>Workflows.runAll</c>.</summary>
[<Sealed; NoEquality; NoComparison>]
type WorkflowDefinition internal (options: WorkflowOptions, start: unit -> WorkflowHandle, outline: string) =
    /// The workflow's name (WorkflowOptions.Name).
    member _.Name = options.Name

    /// The workflow's options.
    member _.Options = options

    /// A readable outline of the workflow's pipe, one node per line.
    member _.Outline = outline

    member internal _.Start() = start ()

/// <summary>The workflows of a list, running. Each runs (and fails, restarts or halts) on its own:
/// a halted workflow does not stop the others.</summary>
[<Sealed>]
type RunningWorkflows internal (handles: WorkflowHandle list) =
    /// The workflows' handles, in the order of the list given to Workflows.runAll.
    member _.Handles = handles

    /// The handle of the workflow named `name`, if it is in the list.
    member _.TryFind(name: string) =
        handles |> List.tryFind (fun h -> h.Name = name)

    /// <summary>Completes when every workflow has completed; faults if one of them halted.</summary>
    member _.Completion: Task = Task.WhenAll [| for h in handles -> h.Completion |]

    /// <summary>Stops every workflow gracefully and concurrently (each as WorkflowHandle.StopAsync:
    /// flush, drain, commit, leave the group) and returns when all have stopped; never throws.</summary>
    member _.StopAsync() : Task =
        Task.WhenAll [| for h in handles -> h.StopAsync() |]

    interface IAsyncDisposable with
        member this.DisposeAsync() = ValueTask(this.StopAsync())

/// Defining workflows as values and running a list of them.
[<RequireQualifiedAccess>]
module Workflows =
    /// <summary>A workflow as a value: <paramref name="options"/> are validated now (ArgumentException
    /// naming the setting); nothing connects until it is started.</summary>
    let define (options: WorkflowOptions) (pipe: Pipe<byte[], 'o>) =
        let options = WorkflowOptions.validate options
        WorkflowDefinition(options, (fun () -> Workflow.run options pipe), Pipe.describe pipe)

    /// Starts one defined workflow (Workflow.run).
    let start (workflow: WorkflowDefinition) = workflow.Start()

    /// <summary>Starts every workflow of the list, in order (KFlow's kflow_config). The names must
    /// be distinct (ArgumentException naming the duplicate, before anything starts). If one fails to
    /// start (a bad librdkafka property), the ones already started are stopped and the exception is
    /// raised.</summary>
    let runAll (workflows: WorkflowDefinition list) =
        match workflows |> List.countBy _.Name |> List.tryFind (fun (_, n) -> n > 1) with
        | Some(name, _) ->
            invalidSetting
                "workflows"
                $"Workflows.runAll: two workflows are named '{name}'; give each a distinct WorkflowOptions.Name."
        | None -> ()

        let started = ResizeArray<WorkflowHandle>()

        try
            for w in workflows do
                started.Add(start w)
        with _ ->
            Task.WaitAll [| for h in started -> h.StopAsync() |]
            reraise ()

        RunningWorkflows(List.ofSeq started)
