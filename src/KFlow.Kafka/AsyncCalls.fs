// The async map calls of one partition loop: started with their stage's retries in place, their
// results queued until the loop resumes the pipe with them, oldest first. Loop thread only.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open KFlow

/// <summary>A call that runs on past its start. Once its task ends (however it ends) it gives back
/// the gate slot it took at its start, if it took one, then hands itself to <c>ended</c>, on the
/// thread that ended the task. It is its task's continuation itself: one object and one delegate
/// per call, where two ContinueWith (the slot's release and the completion) made two continuation
/// tasks, two closures and the task's continuation list.</summary>
[<Sealed>]
type internal RunningCall
    (generation: int, id: int, task: Task<obj>, gate: ConcurrencyGate, held: bool, ended: RunningCall -> unit)
    =
    member private this.End() =
        if held then
            gate.Release()

        ended this

    /// The assignment (generation) the call belongs to.
    member _.Generation = generation

    /// The call's number within the run.
    member _.Id = id

    /// The call's result; its task has ended.
    member _.Result: Result<obj, exn> =
        if task.IsCompletedSuccessfully then
            Ok task.Result
        else
            Error(taskError task)

    /// Registers the call as its task's only continuation.
    member this.Watch() =
        task.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(Action this.End)

/// <summary>The async calls of one partition loop. A call that runs on is handed to
/// <c>ended</c> (as a RunningCall of assignment <c>generation ()</c>) once it has ended; the loop
/// gives its result to <c>Arrived</c>. Each try of a call runs under <c>gate</c> (the workflow's
/// MaxConcurrentCalls, so a retry's backoff wait holds no slot). A call without retries in place
/// that finds a slot free starts the user's function at once, with no wrapper; any other waits for
/// its slot, that wait cancelled by the token <c>waiting ()</c> gave when the call started.</summary>
[<Sealed>]
type internal AsyncCalls
    (
        tp: KFlow.TopicPartition,
        handling: FailureHandling,
        gate: ConcurrencyGate,
        waiting: unit -> CancellationToken,
        generation: unit -> int,
        ended: RunningCall -> unit
    ) =
    let ready = Queue<struct (int * Result<obj, exn>)>()
    // The policy of each async node seen (their failures come after the retries in place).
    let policies = Dictionary<string, ErrorPolicy>()
    let mutable inFlight = 0

    let policyOf (stage: string) =
        match policies.TryGetValue stage with
        | true, p -> p
        | _ ->
            let p = FailureHandling.policyOf stage handling
            policies[stage] <- p
            p

    /// The user's function called here: its task, or a faulted one if it threw or gave none.
    let call (request: AsyncRequest) =
        let t =
            try
                request.Run request.Envelope.Value
            with ex ->
                Task.FromException<obj> ex

        if isNull (box t) then
            Task.FromException<obj>(InvalidOperationException "The function returned a null task.")
        else
            t

    /// Calls started whose result has not been taken yet.
    member _.InFlight = inFlight

    /// Whether a result waits to be taken.
    member _.HasReady = ready.Count > 0

    /// Whether `stage` is an async node seen by this loop.
    member _.IsStage(stage: string) = policies.ContainsKey stage

    /// Starts a call; a result available at once is queued now.
    member _.Start(request: AsyncRequest) =
        inFlight <- inFlight + 1
        let policy = policyOf request.Stage
        let held = ErrorPolicy.retries policy = 0 && gate.TryEnter()

        let t =
            if held then
                call request
            else
                let cancel = waiting ()

                FailureHandling.retrying
                    handling
                    (fun () ->
                        $"{tp}: async map '{request.Stage}' at offset {request.Envelope.Position.Offset}")
                    policy
                    (fun () -> gate.Run(cancel, (fun () -> call request)))

        if t.IsCompleted then
            if held then
                gate.Release()

            ready.Enqueue(
                struct (request.Id,
                        (if t.IsCompletedSuccessfully then
                             Ok t.Result
                         else
                             Error(taskError t)))
            )
        else
            RunningCall(generation (), request.Id, t, gate, held, ended).Watch()

    /// Queues the result of a call that ran on.
    member _.Arrived(id: int, result: Result<obj, exn>) = ready.Enqueue(struct (id, result))

    /// Takes the oldest queued result (the call is no longer in flight).
    member _.Take() =
        let r = ready.Dequeue()
        inFlight <- inFlight - 1
        r

    /// Forgets every call (the assignment ended).
    member _.Clear() =
        ready.Clear()
        inFlight <- 0
