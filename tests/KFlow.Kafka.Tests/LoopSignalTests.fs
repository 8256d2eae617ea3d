// Tests for src/KFlow.Kafka/LoopSignal.fs: a parked loop is woken by work queued before or after it
// parked, on the waking pool thread when asked, through the thread pool otherwise.
module KFlow.Kafka.Tests.LoopSignalTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow.Kafka

/// The thread a parked loop's continuation ran on, once it has run.
let private resumedOn (parked: ValueTask) =
    parked
        .AsTask()
        .ContinueWith(
            (fun (_: Task) -> Environment.CurrentManagedThreadId),
            TaskContinuationOptions.ExecuteSynchronously
        )

let tests =
    testList "LoopSignal" [
        test "LoopSignal / work queued before the loop parked ends its wait at once" {
            let signal = LoopSignal()
            let parked = signal.Park(fun () -> true)
            Expect.isTrue parked.IsCompletedSuccessfully "the loop goes on without a wake"
        }

        test "LoopSignal / a wake after the loop parked ends its wait" {
            let signal = LoopSignal()
            let parked = signal.Park(fun () -> false).AsTask()
            Expect.isFalse parked.IsCompleted "parked until a wake"
            signal.Wake false
            Expect.isTrue (parked.Wait(TimeSpan.FromSeconds 10.0)) "woken"
        }

        test "LoopSignal / a wake while the loop runs is left to the loop's next look for work" {
            let signal = LoopSignal()
            signal.Wake true
            let parked = signal.Park(fun () -> false).AsTask()
            Expect.isFalse parked.IsCompleted "the earlier wake does not end a later wait"
            signal.Wake false
            Expect.isTrue (parked.Wait(TimeSpan.FromSeconds 10.0)) "woken by the next wake"
        }

        testTask "LoopSignal / a wake made here on a pool thread resumes the loop before it returns" {
            let signal = LoopSignal()
            let resumed = resumedOn (signal.Park(fun () -> false))

            let! waker =
                Task.Run(fun () ->
                    signal.Wake true
                    struct (Environment.CurrentManagedThreadId, resumed.IsCompleted))

            let struct (wakerThread, doneBeforeReturn) = waker
            Expect.isTrue doneBeforeReturn "the loop's continuation ran within Wake"
            Expect.equal resumed.Result wakerThread "on the waking thread"
        }

        test "LoopSignal / a wake from a thread outside the pool is queued to the pool" {
            let signal = LoopSignal()
            let resumed = resumedOn (signal.Park(fun () -> false))
            let mutable wakerThread = 0

            let waker =
                Thread(fun () ->
                    wakerThread <- Environment.CurrentManagedThreadId
                    signal.Wake true)

            waker.Start()
            waker.Join()
            Expect.isTrue (resumed.Wait(TimeSpan.FromSeconds 10.0)) "woken"
            Expect.notEqual resumed.Result wakerThread "not on the waking thread"
        }

        test "LoopSignal / one signal serves wait after wait" {
            let signal = LoopSignal()

            for _ in 1..3 do
                let parked = signal.Park(fun () -> false).AsTask()
                signal.Wake false
                Expect.isTrue (parked.Wait(TimeSpan.FromSeconds 10.0)) "woken"
        }
    ]
